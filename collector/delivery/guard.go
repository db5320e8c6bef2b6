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
	// IPv6 forms that carry an IPv4 address a gateway or the host's own
	// stack may translate to: each could reach 127.0.0.1 or 169.254.169.254
	// under a name that no IPv4 prefix above matches.
	netip.MustParsePrefix("::/96"),          // IPv4-compatible ::a.b.c.d (deprecated)
	netip.MustParsePrefix("64:ff9b::/96"),   // NAT64, well-known prefix
	netip.MustParsePrefix("64:ff9b:1::/48"), // NAT64, local-use prefix
	netip.MustParsePrefix("2001::/32"),      // Teredo
	netip.MustParsePrefix("2002::/16"),      // 6to4
	netip.MustParsePrefix("fc00::/7"),
	netip.MustParsePrefix("fec0::/10"), // site-local (deprecated, still routed by some stacks)
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

// ErrHostNotAllowed is returned when a caller-chosen callback names a host
// outside its rule's callback.allowedHosts.
var ErrHostNotAllowed = errors.New("callback host is not on the rule's callback.allowedHosts")

// IsRefusal reports whether err is the guard's refusal of a destination (an
// address or a host), as opposed to a failure to reach it: retrying cannot
// change it. gRPC flattens the dialer's error into a status message, so the
// message is recognized too.
func IsRefusal(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrPrivateAddress) || errors.Is(err, ErrHostNotAllowed) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, ErrPrivateAddress.Error()) || strings.Contains(msg, ErrHostNotAllowed.Error())
}

// Guard is the SSRF policy of one callback: the blocked networks, minus what
// the rule allows (allowPrivate: everything; allowNetworks: those prefixes),
// and, for a caller-chosen callback on a rule with callback.allowedHosts,
// the only hosts a connection may name.
type Guard struct {
	open  bool
	allow []netip.Prefix
	hosts []string // normalized rules.Callback.AllowedHosts; nil: any host
}

// GuardFor returns the guard of a callback; fromCaller says the caller chose
// it (envelope.CallbackFromCaller). A caller's callback gets the rule's
// allowances only for a host on callback.allowedHosts (rules.ForCaller),
// and may connect only to those hosts when the list is given — whatever the
// rest of cb says, so that an old or forged envelope lends nothing either.
func GuardFor(cb rules.Callback, fromCaller bool) Guard {
	if !fromCaller {
		return NewGuard(cb.AllowPrivate, cb.AllowNetworks)
	}
	cb = cb.ForCaller()
	g := NewGuard(cb.AllowPrivate, cb.AllowNetworks)
	g.hosts = slices.Clone(cb.AllowedHosts)
	return g
}

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
	key := "open"
	if !g.open {
		s := make([]string, len(g.allow))
		for i, p := range g.allow {
			s[i] = p.String()
		}
		slices.Sort(s)
		key = strings.Join(s, ",")
	}
	if g.hosts != nil {
		h := slices.Clone(g.hosts)
		slices.Sort(h)
		key += "|hosts=" + strings.Join(h, ",")
	}
	return key
}

// CheckHost reports why a connection to addr (host:port, as the dialer is
// given it, before DNS) may not be made, or nil.
func (g Guard) CheckHost(addr string) error {
	if g.hosts == nil {
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || !rules.HostAllowed(g.hosts, host, port) {
		return fmt.Errorf("%w (%s)", ErrHostNotAllowed, addr)
	}
	return nil
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

// DialContext dials through g's checks: the host named, then every address
// connected to.
func (g Guard) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if err := g.CheckHost(addr); err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	return g.dialer().DialContext(ctx, network, addr)
}
