package replay

import (
	"testing"
	"time"
)

// BenchmarkCheckAndUse is the filter's work at a replay's headers, with the
// table as full as 1000 replays/s keep it (about 470 entries per key).
func BenchmarkCheckAndUse(b *testing.B) {
	sh := newMemShared()
	_ = Prepare(sh)
	at := now
	for i := range 15000 { // 15 s at 1000/s: one bucket's worth
		s, _ := Check([][]byte{secret}, Sign(secret, request(), at), request(), at)
		_ = Use(sh, s, at.Add(time.Duration(i)*time.Millisecond))
	}
	values := make([]string, b.N)
	for i := range values {
		values[i] = Sign(secret, request(), at)
	}
	b.ResetTimer()
	for i := range b.N {
		s, err := Check([][]byte{secret, previous}, values[i], request(), at)
		if err != nil {
			b.Fatal(err)
		}
		if err := Use(sh, s, at); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDigest1MiB(b *testing.B) {
	body := make([]byte, 1<<20)
	b.SetBytes(int64(len(body)))
	for range b.N {
		Digest(body)
	}
}
