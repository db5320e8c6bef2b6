package rules

import (
	"strings"
	"testing"
)

func TestCallbackValidation(t *testing.T) {
	rule := func(cb string) string {
		return `{"collectorCluster":"c","rules":[{"name":"a","mode":"async","callback":` + cb + `}]}`
	}
	tests := []struct{ name, cb, want string }{
		{"grpc", `{"url":"grpc://h:9000","protocol":"grpc"}`, ""},
		{"grpc with http scheme", `{"url":"http://h:9000","protocol":"grpc"}`, "callback.url"},
		{"amqp", `{"url":"amqp://h/vh?exchange=x&routingKey=k","protocol":"amqp","credentialsRef":"mq"}`, ""},
		{"amqp without exchange", `{"url":"amqp://h/","protocol":"amqp"}`, "want ?exchange"},
		{"amqp user info", `{"url":"amqp://u:p@h/?exchange=x","protocol":"amqp"}`, "user info"},
		{"amqp unknown param", `{"url":"amqp://h/?exchange=x&q=1","protocol":"amqp"}`, "unknown query parameter"},
		{"credentials on http", `{"url":"http://h/","credentialsRef":"mq"}`, "callback.credentialsRef"},
		{"soapAction on http", `{"url":"http://h/","soapAction":"x"}`, "callback.soapAction"},
		{"bad network", `{"url":"http://h/","allowNetworks":["10.0.0.0"]}`, "callback.allowNetworks[0]"},
		{"select", `{"select":{"header":"x-t","default":"a","targets":{"a":{"url":"http://h/"}}}}`, ""},
		{"select two params", `{"select":{"header":"x-t","query":"t","targets":{"a":{"url":"http://h/"}}}}`, "exactly one"},
		{"select no targets", `{"select":{"query":"t"}}`, "callback.select.targets"},
		{"select bad default", `{"select":{"query":"t","default":"b","targets":{"a":{"url":"http://h/"}}}}`, "callback.select.default"},
		{"select bad target", `{"select":{"query":"t","targets":{"a":{"url":"ftp://h/"}}}}`, "callback.select.targets.a.url"},
		{"select with url", `{"url":"http://h/","select":{"query":"t","targets":{"a":{"url":"http://h/"}}}}`, "callback.select"},
		{"select async header", `{"select":{"header":"x-async-t","targets":{"a":{"url":"http://h/"}}}}`, "callback.select.header"},
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

func TestSOAPActionDefault(t *testing.T) {
	c, err := Parse([]byte(`{"collectorCluster":"c","rules":[{"name":"a","mode":"async","callback":{"url":"http://h/","protocol":"soap"}}]}`))
	if err != nil || c.Rules[0].Callback.SOAPAction != SOAPActionDefault {
		t.Fatalf("%v %+v", err, c)
	}
}

func TestParameterValues(t *testing.T) {
	tests := []struct {
		name, in, key, want string
		ok                  bool
		get                 func(string, string) (string, bool)
	}{
		{"query", "/p?a=1&cb=x%2Fy", "cb", "x/y", true, QueryValue},
		{"query first", "/p?cb=1&cb=2", "cb", "1", true, QueryValue},
		{"query absent", "/p?a=1", "cb", "", false, QueryValue},
		{"query no query", "/p", "cb", "", false, QueryValue},
		{"query empty value", "/p?cb=", "cb", "", true, QueryValue},
		{"json nested", `{"a":{"b":"x"}}`, "a.b", "x", true, jsonField},
		{"json number", `{"a":7}`, "a", "7", true, jsonField},
		{"json object", `{"a":{}}`, "a", "", false, jsonField},
		{"json missing", `{"a":{}}`, "a.b", "", false, jsonField},
		{"json array", `[1]`, "a", "", false, jsonField},
		{"json broken", `{"a":`, "a", "", false, jsonField},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := tt.get(tt.in, tt.key)
			if got != tt.want || ok != tt.ok {
				t.Fatalf("got %q %v, want %q %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func jsonField(body, path string) (string, bool) { return JSONFieldValue([]byte(body), path) }

func FuzzParameterValues(f *testing.F) {
	f.Add("/p?a=1&cb=x", `{"a":{"b":"x"}}`, "a.b")
	f.Fuzz(func(t *testing.T, path, body, key string) {
		QueryValue(path, key)
		JSONFieldValue([]byte(body), key)
	})
}

func TestPick(t *testing.T) {
	s := &Select{Header: "x-t", Targets: map[string]Callback{"a": {URL: "http://a/"}}}
	if _, _, err := s.Pick("", false); err == nil || !strings.Contains(err.Error(), "header x-t: required") {
		t.Fatalf("missing without default: %v", err)
	}
	if _, _, err := s.Pick("b", true); err == nil || !strings.Contains(err.Error(), `"b" names no callback target`) {
		t.Fatalf("unknown: %v", err)
	}
	if k, cb, err := s.Pick("a", true); err != nil || k != "a" || cb.URL != "http://a/" {
		t.Fatalf("known: %q %+v %v", k, cb, err)
	}
}
