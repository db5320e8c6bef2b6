package xdsrules

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// TLSFiles name the PEM files of a collector's TLS to the control plane.
type TLSFiles struct {
	CA         string // CA bundle that verifies the control plane's certificate (required)
	Cert, Key  string // the client certificate and key (both or neither; the control plane's -client-ca requires them)
	ServerName string // name to verify in the control plane's certificate (empty: the host of Config.Address)
}

// ClientTLS returns the tls.Config for Config.TLS. The files are read now (an
// error names the bad one) and the client certificate again whenever its
// files change, so that short-lived certificates rotate without a restart;
// the CA is read once.
func ClientTLS(f TLSFiles, log *slog.Logger) (*tls.Config, error) {
	if f.CA == "" {
		return nil, errors.New("the CA that verifies the control plane is required")
	}
	if (f.Cert == "") != (f.Key == "") {
		return nil, errors.New("a client certificate needs both its certificate and its key file")
	}
	pem, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("reading the control plane's CA: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("control plane CA %s: no PEM certificate in it", f.CA)
	}
	cfg := &tls.Config{RootCAs: roots, ServerName: f.ServerName, MinVersion: tls.VersionTLS12}
	if f.Cert != "" {
		if log == nil {
			log = slog.Default()
		}
		kp := &keyPair{cert: f.Cert, key: f.Key, log: log}
		if err := kp.load(); err != nil {
			return nil, err
		}
		cfg.GetClientCertificate = kp.get
	}
	return cfg, nil
}

// keyPair is a client certificate read again when its files change.
type keyPair struct {
	cert, key string
	log       *slog.Logger

	mu     sync.Mutex
	stamps [2]time.Time
	sizes  [2]int64
	pair   *tls.Certificate
}

func (k *keyPair) stat() (stamps [2]time.Time, sizes [2]int64, err error) {
	for i, p := range []string{k.cert, k.key} {
		fi, err := os.Stat(p)
		if err != nil {
			return stamps, sizes, err
		}
		stamps[i], sizes[i] = fi.ModTime(), fi.Size()
	}
	return stamps, sizes, nil
}

// load reads the pair; the stamps are taken first, so that a file that
// changes while it is read is read again next time.
func (k *keyPair) load() error {
	stamps, sizes, err := k.stat()
	if err != nil {
		return fmt.Errorf("reading the client certificate: %w", err)
	}
	pair, err := tls.LoadX509KeyPair(k.cert, k.key)
	k.stamps, k.sizes = stamps, sizes
	if err != nil {
		return fmt.Errorf("loading the client certificate %s and key %s: %w", k.cert, k.key, err)
	}
	k.pair = &pair
	return nil
}

func (k *keyPair) get(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if stamps, sizes, err := k.stat(); err != nil || stamps != k.stamps || sizes != k.sizes {
		if err := k.load(); err != nil {
			k.log.Error("xdsrules: reloading the client certificate; keeping the previous one", "err", err)
		} else {
			k.log.Info("xdsrules: client certificate reloaded", "cert", k.cert)
		}
	}
	return k.pair, nil
}
