package delivery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// blocked are the networks a callback may not reach unless its rule allows
// them. The check runs on the connected address (Dialer.Control), after DNS,
// so a rebinding answer cannot slip through.
var blocked = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"), // link-local, cloud metadata
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("::/128"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("fc00::/7"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("ff00::/8"),
	netip.MustParsePrefix("fd00:ec2::254/128"), // AWS IMDS over IPv6 (inside fc00::/7, listed for clarity)
}

// Allowed reports whether ip may be a callback target without an allowance.
func Allowed(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range blocked {
		if p.Contains(ip) {
			return false
		}
	}
	return true
}

// ErrPrivateAddress is returned when a callback resolves to an address the
// rule does not allow.
var ErrPrivateAddress = errors.New("callback address is loopback, private, link-local, multicast or metadata; the rule does not allow it")

// Guard is the SSRF policy of one callback: the blocked networks, minus what
// the rule allows (allowPrivate: everything; allowNetworks: those prefixes).
type Guard struct {
	open  bool
	allow []netip.Prefix
}

// GuardFor returns the guard of a callback.
func GuardFor(cb rules.Callback) Guard { return NewGuard(cb.AllowPrivate, cb.AllowNetworks) }

// NewGuard returns the guard that allows everything (allowPrivate) or the
// given networks. Prefixes were validated with the rule; an unparsable one
// is ignored (it allows nothing).
func NewGuard(allowPrivate bool, networks []string) Guard {
	g := Guard{open: allowPrivate}
	for _, n := range networks {
		if p, err := netip.ParsePrefix(n); err == nil {
			g.allow = append(g.allow, p.Masked())
		}
	}
	return g
}

// Check reports why ip may not be reached, or nil.
func (g Guard) Check(ip netip.Addr) error {
	ip = ip.Unmap()
	if g.open || Allowed(ip) {
		return nil
	}
	for _, p := range g.allow {
		if p.Contains(ip) {
			return nil
		}
	}
	return fmt.Errorf("%w (%s)", ErrPrivateAddress, ip)
}

// Key identifies the guard in connection caches: connections are never
// shared between guards, so a connection one rule may open is not reused by
// a rule that may not.
func (g Guard) Key() string {
	if g.open {
		return "open"
	}
	s := make([]string, len(g.allow))
	for i, p := range g.allow {
		s[i] = p.String()
	}
	slices.Sort(s)
	return strings.Join(s, ",")
}

// dialer returns a dialer that checks every connected address against g.
func (g Guard) dialer() *net.Dialer {
	return &net.Dialer{
		Timeout:   5 * time.Second,
		KeepAlive: 30 * time.Second,
		Control: func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("%w (%s)", ErrPrivateAddress, address)
			}
			return g.Check(ap.Addr())
		},
	}
}

// DialContext dials through g's checks.
func (g Guard) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return g.dialer().DialContext(ctx, network, addr)
}
