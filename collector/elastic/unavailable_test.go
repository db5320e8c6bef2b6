package elastic

import (
	"errors"
	"net"
	"testing"

	"github.com/elastic/go-elasticsearch/v8"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// storeAt is a Store whose Elasticsearch is url, with the client settings
// of Open (one retry).
func storeAt(t *testing.T, url string) *Store {
	es, err := elasticsearch.NewClient(elasticsearch.Config{Addresses: []string{url}, MaxRetries: 1})
	if err != nil {
		t.Fatal(err)
	}
	return &Store{es: es}
}

// A bulk that reached no server is store.ErrUnavailable: nothing of it was
// written. One whose connection was lost after it was sent is not, even
// when the client's retry then finds the port closed: Elasticsearch may
// have written it.
func TestBulkUnavailableOnlyWhenNeverSent(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()
	if r := write(runBatcher(t, storeAt(t, closed), 0), "a"); !errors.Is(r.err, store.ErrUnavailable) {
		t.Fatalf("a bulk to a closed port: %+v, want store.ErrUnavailable", r)
	}

	ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // reads the bulk, stops listening and hangs up without an answer
		c, err := ln.Accept()
		if err != nil {
			return
		}
		ln.Close()
		_, _ = c.Read(make([]byte, 64<<10))
		c.Close()
	}()
	r := write(runBatcher(t, storeAt(t, "http://"+ln.Addr().String()), 0), "b")
	if r.err == nil || errors.Is(r.err, store.ErrUnavailable) {
		t.Fatalf("a bulk sent, then its connection lost and the retry refused: %+v, want an error that is not store.ErrUnavailable", r)
	}
}
