package rules

import (
	"math"
	"strings"
	"testing"
)

func TestCallbackLimitsValidation(t *testing.T) {
	rule := func(cb string) string {
		return `{"collectorCluster":"c","rules":[{"name":"a","mode":"async","callback":` + cb + `}]}`
	}
	tests := []struct{ name, cb, want string }{
		{"rate and in flight", `{"url":"http://h/","rateLimit":{"perSecond":5,"burst":10},"maxInFlight":3}`, ""},
		{"slow rate", `{"url":"http://h/","rateLimit":{"perSecond":0.5}}`, ""},
		{"rate zero", `{"url":"http://h/","rateLimit":{"perSecond":0}}`, "callback.rateLimit.perSecond"},
		{"rate below the bound", `{"url":"http://h/","rateLimit":{"perSecond":0.001}}`, "callback.rateLimit.perSecond"},
		{"rate negative", `{"url":"http://h/","rateLimit":{"perSecond":-1}}`, "callback.rateLimit.perSecond"},
		{"rate too high", `{"url":"http://h/","rateLimit":{"perSecond":1e9}}`, "callback.rateLimit.perSecond"},
		{"rate without perSecond", `{"url":"http://h/","rateLimit":{"burst":3}}`, "callback.rateLimit.perSecond"},
		{"burst negative", `{"url":"http://h/","rateLimit":{"perSecond":5,"burst":-1}}`, "callback.rateLimit.burst"},
		{"burst too high", `{"url":"http://h/","rateLimit":{"perSecond":5,"burst":1000001}}`, "callback.rateLimit.burst"},
		{"in flight negative", `{"url":"http://h/","maxInFlight":-1}`, "callback.maxInFlight"},
		{"in flight too high", `{"url":"http://h/","maxInFlight":10001}`, "callback.maxInFlight"},
		{"in a select target", `{"select":{"query":"t","targets":{"a":{"url":"http://h/","maxInFlight":2}}}}`, ""},
		{"bad in a select target", `{"select":{"query":"t","targets":{"a":{"url":"http://h/","maxInFlight":-2}}}}`, "callback.select.targets.a.maxInFlight"},
		{"beside select", `{"maxInFlight":2,"select":{"query":"t","targets":{"a":{"url":"http://h/"}}}}`, "callback.select"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(rule(tt.cb)))
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}

func TestBurstDefault(t *testing.T) {
	for _, tt := range []struct {
		perSecond float64
		want      int
	}{{0.5, 1}, {1, 1}, {7.9, 7}, {100, 100}} {
		c := Callback{URL: "http://h/", RateLimit: &RateLimit{PerSecond: tt.perSecond}}
		if err := c.validateLimits(); err != nil || c.RateLimit.Burst != tt.want {
			t.Fatalf("perSecond %g: burst %d (%v), want %d", tt.perSecond, c.RateLimit.Burst, err, tt.want)
		}
	}
}

func TestCheckLimitsNaN(t *testing.T) {
	if err := CheckLimits(&RateLimit{PerSecond: math.NaN()}, 0); err == nil {
		t.Fatal("NaN perSecond accepted")
	}
	if err := CheckLimits(&RateLimit{PerSecond: math.Inf(1)}, 0); err == nil {
		t.Fatal("infinite perSecond accepted")
	}
}
