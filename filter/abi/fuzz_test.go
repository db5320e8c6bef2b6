package abi

import (
	"bytes"
	"encoding/binary"
	"runtime"
	"testing"
)

// FuzzDecodeHeaders feeds DecodeHeaders, which reads the header maps Envoy
// hands the filter (proxy_get_header_map_pairs, an HTTP call's answer),
// arbitrary bytes. Properties:
//   - it never panics, and never makes more pairs than 8-byte size entries
//     fit in the input: a huge count in a short buffer is an error, not an
//     allocation of count pairs;
//   - decoded pairs re-encode (EncodeHeaders) to the input's bytes, except
//     at the NUL terminators (which the decoder skips without checking) and
//     after the last value (which it ignores); the re-encoding decodes to
//     the same pairs;
//   - every strict prefix of a canonical encoding with pairs is refused
//     (a truncated map is never read as a shorter one).
func FuzzDecodeHeaders(f *testing.F) {
	f.Add(EncodeHeaders([]Header{{":method", "GET"}, {":path", "/work?x=1"}, {"x-request-id", "0190b3c2"}}))
	f.Add(EncodeHeaders([]Header{{"", ""}}))
	f.Add(EncodeHeaders(nil))
	f.Add(EncodeHeaders([]Header{{"a\x00b", "\xff\x00"}}))
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0})                                                     // short count
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})                                      // 4 Gi pairs, no room for one
	f.Add([]byte{0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0})                          // huge count, one size half
	f.Add([]byte{1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0})        // key size 4 GiB
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0})        // value size 4 GiB
	f.Add([]byte{1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 'k', 'X', 'v', 'Y', 'z'}) // terminators not NUL, trailing byte
	f.Fuzz(func(t *testing.T, buf []byte) {
		hs, err := DecodeHeaders(buf)
		if err != nil {
			if hs != nil {
				t.Fatalf("DecodeHeaders(%x) returned pairs with its error %v", buf, err)
			}
		} else {
			if len(buf) >= 4 && len(hs) > (len(buf)-4)/8 || len(buf) < 4 && len(hs) > 0 {
				t.Fatalf("DecodeHeaders(%d bytes) made %d pairs", len(buf), len(hs))
			}
			if len(buf) >= 4 && uint32(len(hs)) != binary.LittleEndian.Uint32(buf) {
				t.Fatalf("DecodeHeaders(%x) made %d pairs, the count says %d", buf, len(hs), binary.LittleEndian.Uint32(buf))
			}
			enc := EncodeHeaders(hs)
			if len(hs) > 0 || len(buf) > 0 {
				if len(enc) > len(buf) {
					t.Fatalf("DecodeHeaders(%x) = %q, which encodes to %d bytes, more than were read", buf, hs, len(enc))
				}
				for i := range enc {
					if enc[i] != buf[i] && enc[i] != 0 {
						t.Fatalf("DecodeHeaders(%x) = %q re-encodes to %x: differs at byte %d", buf, hs, enc, i)
					}
				}
			}
			again, err := DecodeHeaders(enc)
			if err != nil || len(again) != len(hs) {
				t.Fatalf("re-encoding %q decodes to %q, %v", hs, again, err)
			}
			for i := range hs {
				if again[i] != hs[i] {
					t.Fatalf("re-encoding %q decodes to %q", hs, again)
				}
			}
		}

		// The same bytes as one header's value, in a canonical map: it
		// round-trips, and each of its strict prefixes is refused.
		pairs := []Header{{"x-fuzz", string(buf)}, {string(buf), ""}}
		enc := EncodeHeaders(pairs)
		got, err := DecodeHeaders(enc)
		if err != nil || len(got) != 2 || got[0] != pairs[0] || got[1] != pairs[1] {
			t.Fatalf("%q encodes to %x, decodes to %q, %v", pairs, enc, got, err)
		}
		for _, n := range []int{1, 4, 5, len(enc) / 2, len(enc) - 2, len(enc) - 1} {
			if n <= 0 || n >= len(enc) {
				continue
			}
			if got, err := DecodeHeaders(bytes.Clone(enc[:n])); err == nil {
				t.Fatalf("a %d-byte prefix of %x decodes to %q", n, enc, got)
			}
		}
	})
}

// TestDecodeHeadersBoundsCount plays a host (or a corrupted buffer) that
// announces far more pairs than the buffer holds: DecodeHeaders refuses it
// before allocating anything for them.
func TestDecodeHeadersBoundsCount(t *testing.T) {
	for _, tc := range []struct {
		name string
		buf  []byte
	}{
		{"4 Gi pairs in 4 bytes", []byte{0xff, 0xff, 0xff, 0xff}},
		{"2 Gi pairs in 12 bytes", []byte{0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0}},
		{"2 pairs in room for 1", []byte{2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for range 100 {
				if hs, err := DecodeHeaders(tc.buf); err == nil {
					t.Fatalf("decoded %d pairs", len(hs))
				}
			}
			runtime.ReadMemStats(&after)
			if per := (after.TotalAlloc - before.TotalAlloc) / 100; per > 256 {
				t.Fatalf("refusing a %d-byte map allocated %d bytes", len(tc.buf), per)
			}
		})
	}
}
