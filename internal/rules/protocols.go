package rules

import (
	"fmt"
	"net/url"
	"strings"
)

// Callback protocols: their names.
const (
	ProtocolHTTP = "http" // JSON POST signed by Standard Webhooks v1
	ProtocolSOAP = "soap" // SOAP 1.1 envelope POST with SOAPAction
	ProtocolGRPC = "grpc" // unary Deliver of client/callbackpb's Callback service
	ProtocolAMQP = "amqp" // a message published to an exchange with a routing key
)

// Protocol is the configuration half of a callback protocol: what a rule
// using it may say. The sending half (name → sender) is registered in
// collector/delivery, one file per protocol, and a test there checks that the
// two registries name the same protocols.
//
// Why two halves: this package is compiled into the Wasm filter, which
// validates rules and caller-chosen protocols at intake, so it cannot import
// the senders (gRPC and AMQP clients). Adding a protocol is one entry in
// protocols below plus one file in collector/delivery, and a row in
// docs/rules.md (a test there fails without it).
type Protocol struct {
	Name    string
	Schemes []string // URL schemes a callback URL may use
	// CheckURL, when set, checks the rest of a parsed callback URL whose
	// scheme, host and user info are already checked.
	CheckURL func(u *url.URL) error
	// What the protocol allows of the callback's optional fields.
	SOAPAction  bool // soapAction (with a default)
	Credentials bool // credentialsRef
	Encryption  bool // encryption of the payload
	Doc         string
}

// protocols is the registry, in the order docs list them.
var protocols = []Protocol{
	{Name: ProtocolHTTP, Schemes: []string{"http", "https"}, Encryption: true,
		Doc: "JSON POST signed by Standard Webhooks v1"},
	{Name: ProtocolSOAP, Schemes: []string{"http", "https"}, SOAPAction: true,
		Doc: "SOAP 1.1 envelope POST with SOAPAction"},
	{Name: ProtocolGRPC, Schemes: []string{"grpc", "grpcs"}, Encryption: true,
		Doc: "unary Deliver of client/callbackpb's Callback service"},
	{Name: ProtocolAMQP, Schemes: []string{"amqp", "amqps"}, Credentials: true, Encryption: true, CheckURL: checkAMQPURL,
		Doc: "a message published to an exchange with a routing key"},
}

// Protocols lists the callback protocols (a copy).
func Protocols() []Protocol { return append([]Protocol(nil), protocols...) }

// LookupProtocol finds a callback protocol by name.
func LookupProtocol(name string) (Protocol, bool) {
	for _, p := range protocols {
		if p.Name == name {
			return p, true
		}
	}
	return Protocol{}, false
}

// CheckProtocol reports whether p is a known callback protocol.
func CheckProtocol(p string) error {
	if _, ok := LookupProtocol(p); ok {
		return nil
	}
	names := make([]string, len(protocols))
	for i, q := range protocols {
		names[i] = q.Name
	}
	return fmt.Errorf("%q is not %s or %s", p, strings.Join(names[:len(names)-1], ", "), names[len(names)-1])
}

// checkAMQPURL wants the exchange and routing key in the query, and nothing
// else there.
func checkAMQPURL(u *url.URL) error {
	q := u.Query()
	if !q.Has("exchange") && !q.Has("routingKey") {
		return fmt.Errorf("%q: want ?exchange=E&routingKey=K", u.Redacted())
	}
	for k := range q {
		if k != "exchange" && k != "routingKey" {
			return fmt.Errorf("%q: unknown query parameter %q (want exchange, routingKey)", u.Redacted(), k)
		}
	}
	return nil
}
