package replay

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	secret   = []byte("0123456789abcdef0123456789abcdef")     // 32 bytes
	previous = []byte("previous-secret-previous-secret-prev") // retiring
	retired  = []byte("retired-secret-retired-secret-retired")
	now      = time.Unix(1_700_000_000, 0)
	body     = []byte(`{"n":1}`)
)

func request() Request {
	return Request{ID: "01890a5d-ac96-774b-bcce-b302099a8057", Method: "POST", Authority: "api.local", Path: "/slow?x=1", BodyDigest: Digest(body)}
}

// v1 is the old format, signed as the old code did.
func v1(secret []byte, id, method, path string, at time.Time) string {
	t := strconv.FormatInt(at.Unix(), 10)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(id + "." + t + "." + method + "." + path))
	return "t=" + t + ",v1=" + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func TestVerify(t *testing.T) {
	good := Sign(secret, request(), now)
	other := func(f func(*Request)) Request { r := request(); f(&r); return r }
	tests := []struct {
		name    string
		secrets [][]byte
		value   string
		req     Request
		at      time.Time
		want    error
	}{
		{"valid", [][]byte{secret}, good, request(), now, nil},
		{"valid within skew", [][]byte{secret}, good, request(), now.Add(MaxSkew), nil},
		{"valid from a collector clock ahead", [][]byte{secret}, good, request(), now.Add(-MaxSkew), nil},
		{"stale", [][]byte{secret}, good, request(), now.Add(MaxSkew + time.Second), ErrStale},
		{"from the future", [][]byte{secret}, good, request(), now.Add(-MaxSkew - time.Second), ErrStale},
		{"another body", [][]byte{secret}, good, other(func(r *Request) { r.BodyDigest = Digest([]byte(`{"n":2}`)) }), now, ErrBodyDigest},
		{"no body", [][]byte{secret}, good, other(func(r *Request) { r.BodyDigest = EmptyDigest }), now, ErrBodyDigest},
		{"another authority", [][]byte{secret}, good, other(func(r *Request) { r.Authority = "admin.local" }), now, ErrSignature},
		{"another method", [][]byte{secret}, good, other(func(r *Request) { r.Method = "DELETE" }), now, ErrSignature},
		{"another path", [][]byte{secret}, good, other(func(r *Request) { r.Path = "/other" }), now, ErrSignature},
		{"another query", [][]byte{secret}, good, other(func(r *Request) { r.Path = "/slow?x=2" }), now, ErrSignature},
		{"path re-escaped", [][]byte{secret}, Sign(secret, other(func(r *Request) { r.Path = "/a{b}" }), now),
			other(func(r *Request) { r.Path = "/a%7Bb%7D" }), now, ErrSignature},
		{"another request id", [][]byte{secret}, good, other(func(r *Request) { r.ID = "01890a5d-ac96-774b-bcce-b302099a8058" }), now, ErrSignature},
		{"bytes moved between fields", [][]byte{secret}, Sign(secret, other(func(r *Request) { r.Method, r.Authority = "POSTa", "pi.local" }), now),
			request(), now, ErrSignature},
		{"signed by the previous secret, still accepted", [][]byte{secret, previous}, Sign(previous, request(), now), request(), now, nil},
		{"signed by the current secret during a rotation", [][]byte{secret, previous}, good, request(), now, nil},
		{"signed by a retired secret", [][]byte{secret, previous}, Sign(retired, request(), now), request(), now, ErrSignature},
		{"no secret", nil, good, request(), now, ErrNoSecret},
		{"empty secret", [][]byte{{}}, good, request(), now, ErrSignature},
		{"v1 header", [][]byte{secret}, v1(secret, request().ID, "POST", "/slow?x=1", now), request(), now, ErrVersion},
		{"v3 header", [][]byte{secret}, "v3" + strings.TrimPrefix(good, "v2"), request(), now, ErrVersion},
		{"garbage", [][]byte{secret}, "garbage", request(), now, ErrMalformed},
		{"empty", [][]byte{secret}, "", request(), now, ErrMalformed},
		{"fields reordered", [][]byte{secret}, reorder(good), request(), now, ErrMalformed},
		{"field repeated", [][]byte{secret}, good + ",s=" + strings.Split(good, ",s=")[1], request(), now, ErrMalformed},
		{"time with a sign", [][]byte{secret}, strings.Replace(good, "t=", "t=+", 1), request(), now, ErrMalformed},
		{"time with a leading zero", [][]byte{secret}, strings.Replace(good, "t=", "t=0", 1), request(), now, ErrMalformed},
		{"time not a number", [][]byte{secret}, strings.Replace(good, "t=1", "t=x", 1), request(), now, ErrMalformed},
		{"signature truncated", [][]byte{secret}, good[:len(good)-1], request(), now, ErrMalformed},
		{"signature not canonical base64", [][]byte{secret}, lastChar(good, 'B'), request(), now, ErrMalformed},
		{"signature flipped", [][]byte{secret}, lastChar(good, 'A'), request(), now, ErrSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Verify(tt.secrets, tt.value, tt.req, tt.at)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Verify = %v, want %v", err, tt.want)
			}
		})
	}
}

// reorder swaps the n= and d= fields.
func reorder(v string) string {
	p := strings.Split(v, ",")
	p[2], p[3] = p[3], p[2]
	return strings.Join(p, ",")
}

// lastChar replaces the signature's last character. The last of 43 base64
// characters carries 4 bits and 2 zero bits: 'A' changes the MAC (unless it
// was 'A'), 'B' sets a padding bit (a second encoding of some MAC).
func lastChar(v string, c byte) string {
	b := []byte(v)
	if b[len(b)-1] == c {
		c = 'E' // 'E' is another valid last character
	}
	b[len(b)-1] = c
	return string(b)
}

func TestSignUsesAFreshNonceEachTime(t *testing.T) {
	a, b := Sign(secret, request(), now), Sign(secret, request(), now)
	if a == b {
		t.Fatal("two signatures of the same request at the same second are equal: a retry would be refused as a reuse")
	}
	sa, err := Parse(a)
	if err != nil {
		t.Fatal(err)
	}
	sb, _ := Parse(b)
	if sa.Nonce == sb.Nonce || sa.MAC == sb.MAC {
		t.Fatal("nonce or MAC repeated")
	}
}

func TestParseSecrets(t *testing.T) {
	long, long2 := strings.Repeat("a", MinSecretLen), strings.Repeat("b", MinSecretLen+10)
	tests := []struct {
		in    string
		n     int
		error string
	}{
		{long, 1, ""},
		{long + "," + long2, 2, ""},
		{"", 0, "no secret"},
		{"short", 0, "the current secret is 5 bytes; at least 32"},
		{long + ",short", 0, "the previous secret is 5 bytes"},
		{long + ",", 0, "the previous secret is 0 bytes"},
		{long + "," + long + "," + long, 0, "more than 2"},
		{strings.Repeat("a", MinSecretLen-1), 0, "31 bytes"},
	}
	for _, tt := range tests {
		got, err := ParseSecrets(tt.in)
		if tt.error != "" {
			if err == nil || !strings.Contains(err.Error(), tt.error) {
				t.Errorf("ParseSecrets(%q) = %v, want an error with %q", tt.in, err, tt.error)
			}
			continue
		}
		if err != nil || len(got) != tt.n {
			t.Errorf("ParseSecrets(%q) = %d secrets, %v", tt.in, len(got), err)
		}
	}
}

func TestReason(t *testing.T) {
	if got := Reason(errors.Join(errors.New("x"), ErrUsed)); got != "used" {
		t.Fatalf("Reason = %q", got)
	}
	if got := Reason(errors.New("other")); got != "refused" {
		t.Fatalf("Reason = %q", got)
	}
}

// memShared is Shared with Envoy's semantics (see abi.FakeShared).
type memShared struct {
	mu        sync.Mutex
	data      map[string]memValue
	cas       uint32
	beforeSet func(key string)
}

type memValue struct {
	v   []byte
	cas uint32
}

func newMemShared() *memShared { return &memShared{data: map[string]memValue{}, cas: 1} }

func (m *memShared) Get(key string) ([]byte, uint32, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.data[key]
	return append([]byte(nil), v.v...), v.cas, ok, nil
}

func (m *memShared) Set(key string, value []byte, cas uint32) (bool, error) {
	if m.beforeSet != nil {
		m.beforeSet(key)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur, ok := m.data[key]; ok && cas != 0 && cas != cur.cas {
		return false, nil
	}
	m.data[key] = memValue{append([]byte(nil), value...), m.cas}
	m.cas++
	return true, nil
}

func (m *memShared) bytes() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, v := range m.data {
		n += len(v.v)
	}
	return n
}

func signed(t *testing.T, at time.Time) Signed {
	t.Helper()
	s, err := Check([][]byte{secret}, Sign(secret, request(), at), request(), at)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestUse(t *testing.T) {
	sh := newMemShared()
	if err := Prepare(sh); err != nil {
		t.Fatal(err)
	}
	if n := len(sh.data); n != ringSlots*shards {
		t.Fatalf("Prepare made %d keys", n)
	}
	a, b := signed(t, now), signed(t, now)
	steps := []struct {
		name string
		sig  Signed
		at   time.Time
		want error
	}{
		{"first use", a, now, nil},
		{"second use", a, now, ErrUsed},
		{"second use later within its validity", a, now.Add(MaxSkew), ErrUsed},
		{"another signature", b, now, nil},
		{"the other again", b, now.Add(time.Second), ErrUsed},
		{"the first again", a, now.Add(2 * time.Second), ErrUsed},
	}
	for _, st := range steps {
		if err := Use(sh, st.sig, st.at); !errors.Is(err, st.want) {
			t.Fatalf("%s: Use = %v, want %v", st.name, err, st.want)
		}
	}
}

// The table is bounded: an hour of replays at 10/s leaves the ring's keys,
// each holding one bucket: what the ring's slots hold (12 buckets of 15 s), not
// an hour's worth.
func TestUseForgetsExpiredBuckets(t *testing.T) {
	sh := newMemShared()
	if err := Prepare(sh); err != nil {
		t.Fatal(err)
	}
	maxBytes := 0
	for s := range 3600 {
		at := now.Add(time.Duration(s) * time.Second)
		for range 10 {
			if err := Use(sh, signed(t, at), at); err != nil {
				t.Fatalf("at %ds: %v", s, err)
			}
		}
		maxBytes = max(maxBytes, sh.bytes())
	}
	if n := len(sh.data); n != ringSlots*shards {
		t.Fatalf("%d keys after an hour, want %d", n, ringSlots*shards)
	}
	// (+1: a shard of a slot keeps its expired bucket until a signature
	// lands in it.)
	limit := (ringSlots+1)*bucketWidth*10*entryLen + ringSlots*shards*header
	if maxBytes > limit {
		t.Fatalf("table held %d bytes at most, want ≤ %d (bounded by the skew, not by time)", maxBytes, limit)
	}
	t.Logf("an hour at 10 replays/s: at most %d bytes of shared data", maxBytes)
}

func TestUseFailsClosed(t *testing.T) {
	sig := signed(t, now)
	key := slotKey(int(mod(floorDiv(sig.T, bucketWidth), ringSlots)), int(sig.MAC[entryLen]%shards))

	t.Run("slot holds a later bucket (clock went back)", func(t *testing.T) {
		sh := newMemShared()
		later := signed(t, now.Add(ringSlots*bucketWidth*time.Second))
		later.MAC = sig.MAC // same shard
		if err := Use(sh, later, later.time()); err != nil {
			t.Fatal(err)
		}
		if err := Use(sh, sig, now); !errors.Is(err, ErrTable) {
			t.Fatalf("Use = %v, want ErrTable", err)
		}
	})
	t.Run("key full", func(t *testing.T) {
		sh := newMemShared()
		v := make([]byte, header+maxEntries*entryLen)
		binary.BigEndian.PutUint64(v, uint64(floorDiv(sig.T, bucketWidth)))
		sh.data[key] = memValue{v, 7}
		if err := Use(sh, sig, now); !errors.Is(err, ErrTable) {
			t.Fatalf("Use = %v, want ErrTable", err)
		}
	})
	t.Run("contended forever", func(t *testing.T) {
		sh := newMemShared()
		_ = Prepare(sh)
		sh.beforeSet = func(k string) { // another VM writes between every Get and Set
			sh.mu.Lock()
			sh.data[k] = memValue{sh.data[k].v, sh.cas}
			sh.cas++
			sh.mu.Unlock()
		}
		if err := Use(sh, sig, now); !errors.Is(err, ErrTable) {
			t.Fatalf("Use = %v, want ErrTable", err)
		}
	})
}

// Another VM spending a signature of the same key between this one's read and
// write must not make either entry disappear (the CAS makes the loser read
// again).
func TestUseDoesNotLoseConcurrentEntries(t *testing.T) {
	sh := newMemShared()
	_ = Prepare(sh)
	a := signed(t, now)
	b := signed(t, now)
	b.MAC[entryLen] = a.MAC[entryLen] // same shard, so the same key
	once := true
	sh.beforeSet = func(string) {
		if once {
			once = false
			sh.beforeSet = nil
			if err := Use(sh, b, now); err != nil {
				t.Errorf("the other VM's Use: %v", err)
			}
		}
	}
	if err := Use(sh, a, now); err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]Signed{"a": a, "b": b} {
		if err := Use(sh, s, now); !errors.Is(err, ErrUsed) {
			t.Errorf("%s reused: %v, want ErrUsed", name, err)
		}
	}
}

// Many workers spending the same signature at once: exactly one wins.
func TestUseOnceUnderConcurrency(t *testing.T) {
	sh := newMemShared()
	_ = Prepare(sh)
	sig := signed(t, now)
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if Use(sh, sig, now) == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d workers accepted the same signature", wins)
	}
}

func (s Signed) time() time.Time { return time.Unix(s.T, 0) }

func FuzzVerify(f *testing.F) {
	f.Add(Sign(secret, Request{ID: "id", Method: "POST", Authority: "api.local", Path: "/slow?x=1", BodyDigest: Digest(body)}, now), "POST", "api.local", "/slow?x=1", body)
	f.Add("t=1700000000,v1=abc", "GET", "", "/", []byte(nil))
	f.Add("v2,t=1700000000,n=,d=,s=", "GET", "h", "/{x}", []byte("x"))
	f.Fuzz(func(t *testing.T, v, method, authority, path string, b []byte) {
		r := Request{ID: "id", Method: method, Authority: authority, Path: path, BodyDigest: Digest(b)}
		s, err := Verify([][]byte{secret, previous}, v, r, now)
		if err == nil {
			// Only a real signature of exactly this request passes, and
			// then only once.
			sh := newMemShared()
			if Use(sh, s, now) != nil || !errors.Is(Use(sh, s, now), ErrUsed) {
				t.Fatal("a verified signature is not single-use")
			}
		}
		if err != nil && Reason(err) == "refused" {
			t.Fatalf("error without a reason: %v", err)
		}
	})
}
