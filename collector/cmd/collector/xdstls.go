package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"

	"github.com/asyncmesh/asyncmesh/collector/xdsrules"
)

// xdsTLSFlags are the collector's TLS to the control plane (-xds).
type xdsTLSFlags struct {
	ca, cert, key, serverName string
}

func (f *xdsTLSFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.ca, "xds-ca", "", "with -xds: CA bundle (PEM) that verifies the control plane's certificate; set: xDS over TLS")
	fs.StringVar(&f.cert, "xds-cert", "", "with -xds-ca: client certificate (PEM) naming this collector's sidecar, spiffe://<trust-domain>/ns/<node-cluster>/sa/<node-id>; reloaded when it changes")
	fs.StringVar(&f.key, "xds-key", "", "with -xds-cert: its private key (PEM)")
	fs.StringVar(&f.serverName, "xds-server-name", "", "with -xds-ca: the name to verify in the control plane's certificate (default: the host of -xds)")
}

// config is the tls.Config of the subscription; nil without -xds-ca.
func (f *xdsTLSFlags) config(xdsAddr string, log *slog.Logger) (*tls.Config, error) {
	if f.ca == "" {
		if f.cert != "" || f.key != "" || f.serverName != "" {
			return nil, errors.New("-xds-ca: required with -xds-cert, -xds-key or -xds-server-name")
		}
		return nil, nil
	}
	if xdsAddr == "" {
		return nil, errors.New("-xds-ca: needs -xds")
	}
	cfg, err := xdsrules.ClientTLS(xdsrules.TLSFiles{CA: f.ca, Cert: f.cert, Key: f.key, ServerName: f.serverName}, log)
	if err != nil {
		return nil, fmt.Errorf("-xds-ca, -xds-cert, -xds-key: %w", err)
	}
	return cfg, nil
}
