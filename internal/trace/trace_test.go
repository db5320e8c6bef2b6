package trace

import (
	"strings"
	"testing"
	"time"
)

func TestParseParent(t *testing.T) {
	valid := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"valid", valid, true},
		{"future version with suffix", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", true},
		{"version 00 with suffix", valid + "-x", false},
		{"version ff", "ff" + valid[2:], false},
		{"upper hex", strings.ToUpper(valid), false},
		{"zero trace id", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", false},
		{"zero span id", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", false},
		{"short", valid[:54], false},
		{"bad separator", strings.Replace(valid, "-", "_", 1), false},
		{"empty", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, ok := ParseParent(tt.in)
			if ok != tt.ok {
				t.Fatalf("ParseParent(%q) ok = %v, want %v", tt.in, ok, tt.ok)
			}
			if ok && tt.in == valid && p.String() != valid {
				t.Fatalf("round trip: got %q", p.String())
			}
		})
	}
}

func TestNewParentRoundTrip(t *testing.T) {
	p := NewParent()
	q, ok := ParseParent(p.String())
	if !ok || q != p {
		t.Fatalf("round trip of %q failed", p.String())
	}
	if !ValidTraceID(p.TraceIDString()) {
		t.Fatalf("trace id %q not valid", p.TraceIDString())
	}
	c := p.Child()
	if c.TraceID != p.TraceID || c.SpanID == p.SpanID {
		t.Fatal("child must keep the trace id and change the span id")
	}
}

func TestRequestID(t *testing.T) {
	a := newUUIDv7(time.UnixMilli(1000))
	b := newUUIDv7(time.UnixMilli(2000))
	if !ValidRequestID(a) || !ValidRequestID(b) {
		t.Fatalf("invalid ids %q %q", a, b)
	}
	if a >= b {
		t.Fatalf("ids not sortable by time: %q >= %q", a, b)
	}
	for _, bad := range []string{"", "not-a-uuid", strings.ToUpper(a), strings.Replace(a, "-7", "-4", 1)} {
		if ValidRequestID(bad) {
			t.Errorf("ValidRequestID(%q) = true", bad)
		}
	}
}

func FuzzParseParent(f *testing.F) {
	f.Add("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		p, ok := ParseParent(s)
		if ok {
			if _, ok2 := ParseParent(p.String()); !ok2 {
				t.Fatalf("reformatted %q does not parse", p.String())
			}
		}
	})
}

func TestRequestIDTime(t *testing.T) {
	now := time.Date(2026, 11, 23, 9, 30, 1, 234_000_000, time.UTC)
	id := newUUIDv7(now)
	got, ok := RequestIDTime(id)
	if !ok || !got.Equal(now) {
		t.Fatalf("RequestIDTime(%s) = %v, %v; want %v", id, got, ok, now)
	}
	if _, ok := RequestIDTime("not-an-id"); ok {
		t.Fatal("accepted a bad id")
	}
}
