package delivery

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

// TestGuardRefusesIPv6Translations: one row per prefix whose addresses
// carry (or once carried) an IPv4 address that a NAT64 gateway, a 6to4 or
// Teredo relay or the host's own stack may translate to loopback or the
// metadata service; each is refused without an allowance and reachable with
// allowPrivate or its own allowNetworks entry.
func TestGuardRefusesIPv6Translations(t *testing.T) {
	tests := []struct {
		name, prefix, ip string
	}{
		{"NAT64 well-known of 169.254.169.254", "64:ff9b::/96", "64:ff9b::a9fe:a9fe"},
		{"NAT64 well-known of 127.0.0.1", "64:ff9b::/96", "64:ff9b::7f00:1"},
		{"NAT64 local-use", "64:ff9b:1::/48", "64:ff9b:1:2::a9fe:a9fe"},
		{"6to4 of 127.0.0.1", "2002::/16", "2002:7f00:1::1"},
		{"6to4 of a public address", "2002::/16", "2002:5db8:d822::1"},
		{"Teredo", "2001::/32", "2001:0:4136:e378:8000:63bf:3fff:fdd2"},
		{"IPv4-compatible 127.0.0.1", "::/96", "::127.0.0.1"},
		{"IPv4-compatible 169.254.169.254", "::/96", "::169.254.169.254"},
		{"site-local", "fec0::/10", "fec0::1"},
		{"site-local, top of the range", "fec0::/10", "feff:ffff::1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ip := netip.MustParseAddr(tt.ip)
			if Allowed(ip) {
				t.Fatalf("Allowed(%s) = true", ip)
			}
			err := GuardFor(rules.Callback{}, false).Check(ip)
			if !errors.Is(err, ErrPrivateAddress) || !IsRefusal(err) {
				t.Fatalf("Check(%s) = %v, want ErrPrivateAddress", ip, err)
			}
			if err := GuardFor(rules.Callback{AllowPrivate: true}, false).Check(ip); err != nil {
				t.Fatalf("allowPrivate: %v", err)
			}
			if err := GuardFor(rules.Callback{AllowNetworks: []string{tt.prefix}}, false).Check(ip); err != nil {
				t.Fatalf("allowNetworks %s: %v", tt.prefix, err)
			}
		})
	}
	// Neighbours that are ordinary public addresses stay reachable.
	for _, s := range []string{"2001:4860:4860::8888", "2003::1", "64:ff9c::1", "febf::1"} {
		if ip := netip.MustParseAddr(s); !Allowed(ip) && !netip.MustParsePrefix("fe80::/10").Contains(ip) {
			t.Errorf("Allowed(%s) = false: a public address is refused", s)
		}
	}
}

// listener counts the connections a test server gets: a refused callback
// must never reach it.
type listener struct {
	net.Listener
	n atomic.Int32
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// countingServer is an http server on 127.0.0.1 that counts connections.
func countingServer(t *testing.T) (*httptest.Server, *listener) {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	l := &listener{Listener: srv.Listener}
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, l
}

// TestCallerURLRefused plays a caller who points its callback at internal
// addresses of a rule that allows private networks for its own URL: the
// attempt is Refused (the record goes dead at once) with the reason, and
// nothing is connected to.
func TestCallerURLRefused(t *testing.T) {
	srv, lis := countingServer(t)
	s := NewSender(secrets{"s": {testSecret}}, time.Second)
	defer s.Close()
	tests := []struct {
		name   string
		url    string
		cb     func(*rules.Callback)
		reason string
	}{
		// The rule lists hooks.example.com only: 127.0.0.1 is refused
		// before any connection, although the rule allows private.
		{"loopback, not listed", srv.URL + "/cb", func(cb *rules.Callback) {
			cb.AllowOverride, cb.AllowedHosts = true, []string{"hooks.example.com"}
		}, "allowedHosts"},
		{"metadata, not listed", "http://169.254.169.254/latest/meta-data/", func(cb *rules.Callback) {
			cb.AllowOverride, cb.AllowedHosts = true, []string{"hooks.example.com"}
		}, "allowedHosts"},
		// An envelope without a list (accepted before lists existed, or
		// forged) that says allowPrivate: the caller's URL gets no
		// allowance, so the SSRF guard refuses it.
		{"loopback, no list", srv.URL + "/cb", func(cb *rules.Callback) { cb.AllowOverride = true }, "loopback, private"},
		{"metadata, no list", "http://169.254.169.254/latest/meta-data/", func(cb *rules.Callback) {}, "loopback, private"},
		{"allowNetworks, no list", srv.URL + "/cb", func(cb *rules.Callback) {
			cb.AllowPrivate, cb.AllowNetworks = false, []string{"127.0.0.0/8"}
		}, "loopback, private"},
		// A listed host whose port is not the listed one.
		{"listed host, other port", srv.URL + "/cb", func(cb *rules.Callback) {
			cb.AllowOverride, cb.AllowedHosts = true, []string{"127.0.0.1:1"}
		}, "allowedHosts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := record(tt.url, true) // the rule's allowPrivate, as examples/rules.yaml had it
			tt.cb(&rec.Envelope.Callback)
			rec.Envelope.CallbackFromCaller = true
			res := s.Send(context.Background(), rec, 1)
			if res.Outcome != Refused || !strings.Contains(res.Attempt.Error, tt.reason) {
				t.Fatalf("outcome %v %+v, want Refused naming %q", res.Outcome, res.Attempt, tt.reason)
			}
			if n := lis.n.Load(); n != 0 {
				t.Fatalf("the refused callback connected %d times", n)
			}
		})
	}
	// The same URL from the rule itself (not the caller's) is delivered: the
	// refusals above are the caller rule, not a broken server.
	if res := s.Send(context.Background(), record(srv.URL+"/cb", true), 1); res.Outcome != Delivered {
		t.Fatalf("the rule's own URL: %+v", res)
	}
}

// TestCallerURLOnTheList: a listed host gets the rule's private allowance
// (the SDK's loopback receiver, the e2e suite).
func TestCallerURLOnTheList(t *testing.T) {
	srv, lis := countingServer(t)
	s := NewSender(secrets{"s": {testSecret}}, time.Second)
	defer s.Close()
	rec := record(srv.URL+"/cb", true)
	rec.Envelope.Callback.AllowOverride, rec.Envelope.Callback.AllowedHosts = true, []string{"127.0.0.1"}
	rec.Envelope.CallbackFromCaller = true
	if res := s.Send(context.Background(), rec, 1); res.Outcome != Delivered || lis.n.Load() != 1 {
		t.Fatalf("%+v (%d connections)", res, lis.n.Load())
	}
}

// TestGuardDialRefusesUnlistedHost: the host list is enforced by the dialer
// itself, whatever the caller of the dialer checked before.
func TestGuardDialRefusesUnlistedHost(t *testing.T) {
	_, lis := countingServer(t)
	g := GuardFor(rules.Callback{AllowOverride: true, AllowPrivate: true, AllowedHosts: []string{"hooks.example.com"}}, true)
	conn, err := g.DialContext(context.Background(), "tcp", lis.Addr().String())
	if err == nil {
		conn.Close()
		t.Fatal("dialed an unlisted host")
	}
	if !errors.Is(err, ErrHostNotAllowed) || !IsRefusal(err) || lis.n.Load() != 0 {
		t.Fatalf("err %v, %d connections", err, lis.n.Load())
	}
	if GuardFor(rules.Callback{AllowPrivate: true}, false).Key() == g.Key() {
		t.Fatal("a caller's guard shares connections with the rule's")
	}
	listed := GuardFor(rules.Callback{URL: "http://" + lis.Addr().String() + "/", AllowOverride: true, AllowPrivate: true, AllowedHosts: []string{"127.0.0.1"}}, true)
	conn, err = listed.DialContext(context.Background(), "tcp", lis.Addr().String())
	if err != nil {
		t.Fatalf("listed host: %v", err)
	}
	conn.Close()
}

// fakeBroker accepts one AMQP connection, sends connection.start offering
// PLAIN and returns the client's connection.start-ok (which carries the
// SASL response, "\x00user\x00password").
func fakeBroker(t *testing.T) (addr string, startOK <-chan []byte) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		hdr := make([]byte, 8)
		if _, err := io.ReadFull(c, hdr); err != nil || !bytes.Equal(hdr, []byte("AMQP\x00\x00\x09\x01")) {
			return
		}
		var p bytes.Buffer
		binary.Write(&p, binary.BigEndian, []uint16{10, 10}) // connection.start
		p.Write([]byte{0, 9})                                // version 0-9
		binary.Write(&p, binary.BigEndian, uint32(0))        // server properties: empty table
		for _, s := range []string{"PLAIN", "en_US"} {
			binary.Write(&p, binary.BigEndian, uint32(len(s)))
			p.WriteString(s)
		}
		var f bytes.Buffer
		f.WriteByte(1) // method frame
		binary.Write(&f, binary.BigEndian, uint16(0))
		binary.Write(&f, binary.BigEndian, uint32(p.Len()))
		f.Write(p.Bytes())
		f.WriteByte(0xCE)
		if _, err := c.Write(f.Bytes()); err != nil {
			return
		}
		head := make([]byte, 7)
		if _, err := io.ReadFull(c, head); err != nil {
			return
		}
		body := make([]byte, binary.BigEndian.Uint32(head[3:])+1)
		if _, err := io.ReadFull(c, body); err != nil {
			return
		}
		got <- body
	}()
	return ln.Addr().String(), got
}

// TestAMQPCallerURLGetsNoCredentials plays a caller who names its own broker
// on a rule with credentialsRef: the broker sees RabbitMQ's default guest
// login, never the rule's password; the rule's own URL does get it (so the
// fake broker shows what a real one would receive).
func TestAMQPCallerURLGetsNoCredentials(t *testing.T) {
	const password = "rule-broker-password"
	sec := credSecrets{"mq": "asyncmesh:" + password}
	for _, tt := range []struct {
		name       string
		fromCaller bool
		want       bool // the password reaches the broker
	}{
		{"rule's own URL", false, true},
		{"caller's URL", true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			addr, startOK := fakeBroker(t)
			s := NewSender(sec, 2*time.Second)
			defer s.Close()
			rec := record("amqp://"+addr+"/?exchange=x&routingKey=k", true)
			cb := &rec.Envelope.Callback
			cb.Protocol, cb.SecretRef, cb.CredentialsRef = rules.ProtocolAMQP, "", "mq"
			cb.AllowOverride, cb.AllowedHosts = true, []string{"127.0.0.1"} // listed: the connection is made
			rec.Envelope.CallbackFromCaller = tt.fromCaller
			res := s.Send(context.Background(), rec, 1)
			if res.Outcome != Retry { // the fake broker hangs up after start-ok
				t.Fatalf("%+v", res)
			}
			select {
			case b := <-startOK:
				if got := bytes.Contains(b, []byte(password)); got != tt.want {
					t.Fatalf("password sent: %v, want %v (start-ok %q)", got, tt.want, b)
				}
				if !tt.want && !bytes.Contains(b, []byte("\x00guest\x00guest")) {
					t.Fatalf("start-ok %q: want the default guest login", b)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the broker got no start-ok")
			}
		})
	}
}

// credSecrets resolves values by reference (broker credentials) and has no
// signing secrets.
type credSecrets map[string]string

func (s credSecrets) Lookup(ref string) ([]webhook.Secret, error) {
	return nil, errors.New("no signing secret " + ref)
}

func (s credSecrets) Value(ref string) (string, error) {
	if v, ok := s[ref]; ok {
		return v, nil
	}
	return "", errors.New("no secret " + ref)
}
