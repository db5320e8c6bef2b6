package store

import "time"

// EndpointLimiter is one collector's heartbeat on an endpoint whose
// callbacks a rule limits (callback.rateLimit, callback.maxInFlight): the
// collectors that deliver to it split its budget between them
// (collector/limits.go). Each writes its own entry about once a second;
// an entry whose Seen is old no longer counts.
type EndpointLimiter struct {
	Collector string    `json:"collector"`
	Seen      time.Time `json:"seen"`
	// Rate (callbacks per second) and InFlight are what this collector may
	// use until its next heartbeat: the others take at most the rest.
	Rate     float64 `json:"rate,omitempty"`
	InFlight int     `json:"inFlight,omitempty"`
}
