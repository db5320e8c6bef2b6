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

func TestDeriveToken(t *testing.T) {
	s1 := []byte("0123456789abcdef0123456789abcdef")
	s2 := []byte("fedcba9876543210fedcba9876543210")
	tok, h := DeriveToken(s1, "id-1")
	if len(tok) != TokenLen || !ValidHash(h) || !Check(h, tok) {
		t.Fatalf("DeriveToken = %q, %q: want a token of %d characters that checks against its hash", tok, h, TokenLen)
	}
	for _, c := range []struct {
		name   string
		secret []byte
		id     string
		same   bool
	}{
		{"same secret and id", s1, "id-1", true},
		{"other id", s1, "id-2", false},
		{"other secret", s2, "id-1", false},
	} {
		if got, _ := DeriveToken(c.secret, c.id); (got == tok) != c.same {
			t.Errorf("%s: equal = %v, want %v", c.name, got == tok, c.same)
		}
	}
}
