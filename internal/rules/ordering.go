package rules

import "strings"

// Ordering names a rule's ordering key: exactly one of Header, Query or
// JSONField (a dot path into a JSON request body), read as callback.select
// reads its parameter. Requests of the rule with the same key value run
// and are called back in intake order, one at a time (the collector's
// ordering.go); a request without the parameter is not ordered.
type Ordering struct {
	Header    string `json:"header,omitempty"`
	Query     string `json:"query,omitempty"`
	JSONField string `json:"jsonField,omitempty"`
}

// MaxOrderKeyLen bounds an ordering key's value: the filter answers 400
// to a longer one, the collector refuses an envelope carrying one.
const MaxOrderKeyLen = 256

// ValidOrderKey reports whether k is a key the collector accepts: 1 to
// MaxOrderKeyLen bytes of printable ASCII.
func ValidOrderKey(k string) bool {
	if k == "" || len(k) > MaxOrderKeyLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x20 || k[i] > 0x7e {
			return false
		}
	}
	return true
}

// validate checks o; errors are *FieldError relative to the rule.
func (o *Ordering) validate() error {
	n := 0
	for _, v := range []string{o.Header, o.Query, o.JSONField} {
		if v != "" {
			n++
		}
	}
	if n != 1 {
		return fieldErr("ordering", "want exactly one of header, query or jsonField")
	}
	if o.Header != "" && (strings.ToLower(o.Header) != o.Header || strings.HasPrefix(o.Header, "x-async-") || strings.HasPrefix(o.Header, ":") || strings.ContainsAny(o.Header, " \t\r\n")) {
		return fieldErr("ordering.header", "%q must be a lower-case header name outside x-async-*", o.Header)
	}
	if o.JSONField != "" && (strings.HasPrefix(o.JSONField, ".") || strings.HasSuffix(o.JSONField, ".") || strings.Contains(o.JSONField, "..")) {
		return fieldErr("ordering.jsonField", "%q is not a dot path such as order.account", o.JSONField)
	}
	return nil
}

// Param names the ordering parameter for messages.
func (o *Ordering) Param() string {
	switch {
	case o.Header != "":
		return "header " + o.Header
	case o.Query != "":
		return "query parameter " + o.Query
	}
	return "body field " + o.JSONField
}
