package tally

import (
	"testing"
	"time"
)

func TestCountAndString(t *testing.T) {
	var s Summary
	s.Faults = map[string]int{"rabbitmq": 2, "kill9": 1, "stall": 0}
	s.Count(map[string]bool{"a": true, "b": true, "c": true}, map[string]int{"a": 1, "b": 3, "x": 1})
	if s.Accepted != 3 || s.Delivered != 2 || s.Lost != 1 || s.Duplicates != 2 {
		t.Fatalf("Count: %+v, want accepted 3, delivered 2, lost 1, duplicates 2", s)
	}
	s.Took = 61 * time.Second
	want := "chaos: accepted=3 delivered=2 lost=1 duplicates=2 stuck=0 crossed=0 faults=kill9×1,rabbitmq×2 took=1m1s"
	if got := s.String("chaos"); got != want {
		t.Errorf("String:\n got %s\nwant %s", got, want)
	}
	if !s.Failed() {
		t.Error("a run with a lost request did not fail")
	}
}
