package rules

import (
	"fmt"
	"math"
)

// RateLimit bounds the callbacks per second to one endpoint (a callback URL
// of a caller, by protocol), across every collector that shares a store:
// PerSecond on average, Burst at once after a quiet spell.
type RateLimit struct {
	PerSecond float64 `json:"perSecond"`
	// Burst defaults to PerSecond rounded down, at least 1.
	Burst int `json:"burst,omitempty"`
}

// Bounds of callback.rateLimit and callback.maxInFlight: a rule beyond them
// is a mistake (a receiver that takes more needs no limit), and they keep
// the per-collector shares and waits (collector/limits.go) in range.
const (
	MinPerSecond   = 0.01
	MaxPerSecond   = 100_000
	MaxBurst       = 100_000
	MaxMaxInFlight = 10_000
)

// Limited reports whether c bounds its endpoint's rate or concurrency.
func (c *Callback) Limited() bool { return c.RateLimit != nil || c.MaxInFlight > 0 }

// validateLimits checks rateLimit and maxInFlight and defaults the burst;
// errors are *FieldError relative to c.
func (c *Callback) validateLimits() error {
	if err := CheckLimits(c.RateLimit, c.MaxInFlight); err != nil {
		return err
	}
	if r := c.RateLimit; r != nil && r.Burst == 0 {
		r.Burst = max(1, int(math.Floor(r.PerSecond)))
	}
	return nil
}

// CheckLimits checks the bounds of a callback's rateLimit and maxInFlight
// (as a rule sets them, and as an envelope carries them); errors are
// *FieldError relative to the callback.
func CheckLimits(r *RateLimit, maxInFlight int) error {
	if r != nil {
		// NaN fails both comparisons: !(x >= min) catches it.
		if !(r.PerSecond >= MinPerSecond) || r.PerSecond > MaxPerSecond {
			return fieldErr("rateLimit.perSecond", "must be between %g and %d, got %g", MinPerSecond, MaxPerSecond, r.PerSecond)
		}
		if r.Burst < 0 || r.Burst > MaxBurst {
			return fieldErr("rateLimit.burst", "must be between 1 and %d (0: perSecond rounded down, at least 1), got %d", MaxBurst, r.Burst)
		}
	}
	if maxInFlight < 0 || maxInFlight > MaxMaxInFlight {
		return fieldErr("maxInFlight", "must be between 1 and %d (0: no bound), got %d", MaxMaxInFlight, maxInFlight)
	}
	return nil
}

// String is the limit as the docs write it.
func (r *RateLimit) String() string {
	return fmt.Sprintf("{perSecond: %g, burst: %d}", r.PerSecond, r.Burst)
}
