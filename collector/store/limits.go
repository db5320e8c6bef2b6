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
	// Demand is what this collector wanted over the interval before the
	// heartbeat, by which the collectors weigh their shares. nil (a
	// collector from before demands were reported) counts as wanting more
	// than its share.
	Demand *EndpointDemand `json:"demand,omitempty"`
}

// EndpointDemand is a collector's recent demand on a limited endpoint.
type EndpointDemand struct {
	// Rate is the callbacks it started per second, and InFlight the most it
	// had in flight at once.
	Rate     float64 `json:"rate,omitempty"`
	InFlight int     `json:"inFlight,omitempty"`
	// Starved: some of its callbacks waited for a token or a place (it
	// would have used more).
	Starved bool `json:"starved,omitempty"`
}
