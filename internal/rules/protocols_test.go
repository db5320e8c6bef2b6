package rules

import (
	"os"
	"strings"
	"testing"
)

// TestProtocolRules checks what each registered protocol lets a rule say.
func TestProtocolRules(t *testing.T) {
	for _, tc := range []struct {
		name string
		cb   Callback
		err  string // substring; "" means valid
	}{
		{"http", Callback{Protocol: ProtocolHTTP, URL: "https://a.example/cb"}, ""},
		{"http wrong scheme", Callback{Protocol: ProtocolHTTP, URL: "grpc://a.example:1"}, "scheme must be http or https"},
		{"soap default action", Callback{Protocol: ProtocolSOAP, URL: "https://a.example/cb"}, ""},
		{"soap sealed", Callback{Protocol: ProtocolSOAP, URL: "https://a.example/cb", Encryption: &Encryption{}}, "not for protocol soap"},
		{"grpc", Callback{Protocol: ProtocolGRPC, URL: "grpcs://a.example:443"}, ""},
		{"grpc soapAction", Callback{Protocol: ProtocolGRPC, URL: "grpcs://a.example:443", SOAPAction: "x"}, "not for protocol grpc"},
		{"amqp", Callback{Protocol: ProtocolAMQP, URL: "amqps://mq.example/v?exchange=e&routingKey=k", CredentialsRef: "mq"}, ""},
		{"amqp no exchange", Callback{Protocol: ProtocolAMQP, URL: "amqps://mq.example/v"}, "want ?exchange=E&routingKey=K"},
		{"amqp extra query", Callback{Protocol: ProtocolAMQP, URL: "amqps://mq.example/v?exchange=e&x=1"}, `unknown query parameter "x"`},
		{"http credentialsRef", Callback{Protocol: ProtocolHTTP, URL: "https://a.example/cb", CredentialsRef: "mq"}, "not for protocol http"},
		{"unknown", Callback{Protocol: "smtp", URL: "https://a.example/cb"}, `"smtp" is not http, soap, grpc or amqp`},
	} {
		err := tc.cb.validate()
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.err)
		}
	}
	if cb := (Callback{Protocol: ProtocolSOAP, URL: "https://a.example/cb"}); cb.validate() == nil && cb.SOAPAction != SOAPActionDefault {
		t.Errorf("soap: SOAPAction %q, want the default", cb.SOAPAction)
	}
}

// TestProtocolsDocumented checks that docs/rules.md has a row for every
// registered protocol, so that the reference cannot lag the registry.
func TestProtocolsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/rules.md")
	if err != nil {
		t.Fatalf("reading docs/rules.md: %v", err)
	}
	for _, p := range Protocols() {
		if !strings.Contains(string(doc), "| `"+p.Name+"` |") {
			t.Errorf("docs/rules.md has no row for protocol %s (%s)", p.Name, p.Doc)
		}
		if p.Doc == "" || len(p.Schemes) == 0 {
			t.Errorf("protocol %s: want a docs line and at least one scheme", p.Name)
		}
	}
}
