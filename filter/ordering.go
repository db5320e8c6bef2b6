package main

import (
	"fmt"

	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// orderParam reads the header or query parameter that orders a rule's
// requests (a body field is read with the body, in dispatch).
func (s *stream) orderParam(o *rules.Ordering) (string, bool) {
	if o.Header != "" {
		return s.lookup(o.Header)
	}
	return rules.QueryValue(s.path, o.Query)
}

// orderBy sets the request's ordering key from the parameter's value, or
// answers 400 and returns false. A request without the parameter is not
// ordered (docs/rules.md, "ordering"): a rule orders the requests that name
// a key, and those that have none are taken as any other. A value the
// collector would refuse (empty, too long, not printable ASCII) is
// answered here, before the caller is told 202.
func (s *stream) orderBy(o *rules.Ordering, value string, present bool) bool {
	if !present {
		return true
	}
	if !rules.ValidOrderKey(value) {
		s.reject(400, "bad_ordering_key", fmt.Sprintf("%s: the ordering key must be 1 to %d bytes of printable ASCII", o.Param(), rules.MaxOrderKeyLen))
		return false
	}
	s.orderKey = value
	return true
}
