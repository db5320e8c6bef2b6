package delivery

import (
	"bytes"
	"encoding/xml"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzSOAPFault feeds parseFault, which reads a receiver's error answer
// (up to 64 KiB, see post) into the attempt's error message, arbitrary
// bytes, and an envelope built around a fuzzed faultcode and faultstring.
// Properties:
//   - parseFault never panics; what it returns is valid UTF-8 and no longer
//     than its input (XML has no entity expansion here to blow it up);
//   - a well-formed fault envelope yields exactly "code: string", whatever
//     namespace prefix the receiver chose;
//   - a callback envelope (EncodeSOAP) is not taken for a fault.
func FuzzSOAPFault(f *testing.F) {
	f.Add([]byte(`<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode>s:Server</faultcode><faultstring>ledger locked</faultstring></s:Fault></s:Body></s:Envelope>`), "s:Server", "ledger locked")
	f.Add([]byte(`<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><soapenv:Fault><faultcode>soapenv:Client</faultcode><faultstring xml:lang="en">bad &amp; &#x10FFFF; <![CDATA[<x>]]></faultstring><detail><x/></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>`), "", "")
	f.Add([]byte(`<Envelope><Body><Fault><faultcode>x</faultcode></Fault></Body></Envelope>`), "a\nb", " ")                                                   // no namespace: not SOAP 1.1
	f.Add([]byte(`<!DOCTYPE e [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]><e>&b;</e>`), "&a;", "<")                                               // entities are not expanded
	f.Add([]byte(`<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultstring>`+strings.Repeat("x", 1000)), "\x00", "\xff") // unterminated
	f.Add(EncodeSOAP(Payload{ID: "0190b3c2", Status: "failed", Error: "s:Server: x"}), "c", "s")
	f.Add([]byte{}, "", "")
	f.Fuzz(func(t *testing.T, data []byte, code, str string) {
		if got, err := parseFault(data); err == nil {
			if !utf8.ValidString(got) {
				t.Fatalf("parseFault(%q) = %q: not UTF-8", data, got)
			}
			if len(got) > len(data) {
				t.Fatalf("parseFault(%q) = %d bytes from %d", data, len(got), len(data))
			}
		}

		// A fault envelope built around code and str, under a fuzzed-in prefix.
		prefix := "soapenv"
		if len(data) > 0 {
			prefix = []string{"s", "soap", "SOAP-ENV", "env"}[int(data[0])%4]
		}
		var b bytes.Buffer
		b.WriteString(`<` + prefix + `:Envelope xmlns:` + prefix + `="` + NamespaceSOAPEnvelope + `"><` + prefix + `:Body><` + prefix + `:Fault><faultcode>`)
		_ = xml.EscapeText(&b, []byte(code))
		b.WriteString(`</faultcode><faultstring>`)
		_ = xml.EscapeText(&b, []byte(str))
		b.WriteString(`</faultstring></` + prefix + `:Fault></` + prefix + `:Body></` + prefix + `:Envelope>`)
		got, err := parseFault(b.Bytes())
		if err != nil {
			t.Fatalf("parseFault(%s): %v", b.Bytes(), err)
		}
		// EscapeText writes U+FFFD for what XML cannot carry.
		if want := xmlText(code) + ": " + xmlText(str); got != want {
			t.Fatalf("parseFault(%s) = %q, want %q", b.Bytes(), got, want)
		}

		// A callback envelope is not a fault.
		p := Payload{ID: "0190b3c2", TraceID: "4bf92f3577b34da6a3ce929d0e0e4736", Status: "failed", Error: str,
			Response: &PayloadResponse{Status: 500, Headers: map[string]string{"faultcode": code}, Body: string(data)}}
		if got, err := parseFault(EncodeSOAP(p)); err == nil {
			t.Fatalf("a callback envelope parsed as the fault %q", got)
		}
	})
}

// xmlText is s as xml.EscapeText and a decoder carry it: each invalid byte
// or character XML cannot hold becomes U+FFFD.
func xmlText(s string) string {
	var b strings.Builder
	for len(s) > 0 {
		r, n := utf8.DecodeRuneInString(s)
		if r == utf8.RuneError && n == 1 || !isXMLChar(r) {
			r = utf8.RuneError
		}
		b.WriteRune(r)
		s = s[n:]
	}
	return b.String()
}
