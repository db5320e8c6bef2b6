package store

import (
	"testing"

	"github.com/asyncmesh/asyncmesh/internal/envelope"
)

func TestRecentKeepsWhatWasWritten(t *testing.T) {
	c := NewRecent()
	r := &Record{ID: "a", Status: Queued, Envelope: &envelope.Envelope{Rule: "stored"}, History: make([]Transition, 1, 8)}
	c.Put(r, Version{Seq: 3, Term: 1})
	r.Envelope = &envelope.Envelope{Rule: "live view"} // the caller goes on using r
	got, ver, ok := c.Get("a")
	if !ok || ver != (Version{Seq: 3, Term: 1}) || got.Envelope.Rule != "stored" {
		t.Fatalf("Get = %+v %v %v, want the record as written at 3/1", got, ver, ok)
	}
	got.History = append(got.History, Transition{Status: Processing}) // as Change.Apply does
	again, _, _ := c.Get("a")
	if len(again.History) != 1 {
		t.Fatalf("an append to a copy reached the cache: %+v", again.History)
	}
	c.Drop("a")
	if _, _, ok := c.Get("a"); ok {
		t.Fatal("Drop kept the record")
	}
}

// TestRecentForgetsTerminalRecords: a record written delivered or dead is
// not kept (after a burst, an idle collector held its last 4096 records).
func TestRecentForgetsTerminalRecords(t *testing.T) {
	c := NewRecent()
	for _, st := range []Status{Delivering, Delivered, Dead} {
		c.Put(&Record{ID: "a", Status: Delivering}, Version{Seq: 1})
		c.Put(&Record{ID: "a", Status: st}, Version{Seq: 2})
		_, _, ok := c.Get("a")
		if want := !st.Terminal(); ok != want {
			t.Errorf("after a write in %s: cached %v, want %v", st, ok, want)
		}
	}
}
