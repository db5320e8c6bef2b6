package access

import "testing"

func TestTokenRoundTrip(t *testing.T) {
	tok, h := NewToken()
	if len(tok) != TokenLen || !ValidHash(h) {
		t.Fatalf("token %q hash %q: want %d characters each", tok, h, TokenLen)
	}
	other, _ := NewToken()
	for _, c := range []struct {
		name        string
		hash, token string
		want        bool
	}{
		{"its own token", h, tok, true},
		{"another request's token", h, other, false},
		{"the hash itself as token", h, h, false},
		{"empty token", h, "", false},
		{"no stored hash", "", tok, false},
		{"a prefix", h, tok[:20], false},
	} {
		if got := Check(c.hash, c.token); got != c.want {
			t.Errorf("%s: Check = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestValidHash(t *testing.T) {
	for _, h := range []string{"", "short", "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!", Hash("x") + "A"} {
		if ValidHash(h) {
			t.Errorf("ValidHash(%q) = true", h)
		}
	}
}
