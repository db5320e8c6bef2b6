package main

import (
	"strings"
	"testing"

	"github.com/asyncmesh/asyncmesh/internal/envelope"
)

// TestOrderingKeyRead: the filter reads a rule's ordering key from a
// header, a query parameter or a JSON body field into the envelope; a
// request without it is not ordered; a key the collector would refuse
// (too long, not printable) is answered 400 with no intake.
func TestOrderingKeyRead(t *testing.T) {
	cfg := `{"collectorCluster": "c", "rules": [
	  {"name": "by-header", "match": {"pathPrefix": "/h"}, "mode": "async", "callback": {"url": "https://cb.example/"},
	   "ordering": {"header": "x-account"}},
	  {"name": "by-query", "match": {"pathPrefix": "/q"}, "mode": "async", "callback": {"url": "https://cb.example/"},
	   "ordering": {"query": "account"}},
	  {"name": "by-body", "match": {"pathPrefix": "/b"}, "mode": "async", "callback": {"url": "https://cb.example/"},
	   "ordering": {"jsonField": "order.account"}}
	]}`
	long := strings.Repeat("k", 257)
	tests := []struct {
		name, path, body string
		hdrs             []string
		status           int
		key              string
	}{
		{"header", "/h", "", []string{"x-account", "acme-1"}, 0, "acme-1"},
		{"header missing", "/h", "", nil, 0, ""},
		{"header too long", "/h", "", []string{"x-account", long}, 400, ""},
		{"header empty", "/h", "", []string{"x-account", ""}, 400, ""},
		{"query", "/q?x=1&account=a%20b", "", nil, 0, "a b"},
		{"query missing", "/q?x=1", "", nil, 0, ""},
		{"query not printable", "/q?account=a%00b", "", nil, 400, ""},
		{"body", "/b", `{"order":{"account":"acme-2"}}`, nil, 0, "acme-2"},
		{"body number", "/b", `{"order":{"account":42}}`, nil, 0, "42"},
		{"body missing", "/b", `{"order":{}}`, nil, 0, ""},
		{"body not JSON", "/b", `account=acme`, nil, 0, ""},
		{"body too long", "/b", `{"order":{"account":"` + long + `"}}`, nil, 400, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarnessWith(t, cfg)
			var body []byte
			if tt.body != "" {
				body = []byte(tt.body)
			}
			h.request("POST", tt.path, body, tt.hdrs...)
			if tt.status != 0 {
				if h.host.Local == nil || h.host.Local.Status != tt.status || len(h.host.Calls) != 0 {
					t.Fatalf("want %d and no intake, got %+v, %d calls", tt.status, h.host.Local, len(h.host.Calls))
				}
				return
			}
			if len(h.host.Calls) != 1 {
				t.Fatalf("no intake call; local answer %+v", h.host.Local)
			}
			env, err := envelope.Decode(h.host.Calls[0].Body)
			if err != nil || env.OrderKey != tt.key || env.OrderAfter != nil {
				t.Fatalf("envelope ordering key %q, link %+v, err %v; want %q", env.OrderKey, env.OrderAfter, err, tt.key)
			}
		})
	}
}
