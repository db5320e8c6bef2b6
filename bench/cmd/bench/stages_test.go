package main

import (
	"reflect"
	"testing"
	"time"
)

func TestSummarizeStages(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	tests := []struct {
		name      string
		histories [][]statusAt
		want      []Stage
	}{
		{"none", nil, nil},
		{"one record through its life", [][]statusAt{{
			{"persisted", at(0)}, {"queued", at(2)}, {"processing", at(5)}, {"completed", at(15)}, {"delivering", at(16)}, {"delivered", at(20)},
		}}, []Stage{
			{"persisted", "queued", 2, 2}, {"queued", "processing", 3, 3}, {"processing", "completed", 10, 10},
			{"completed", "delivering", 1, 1}, {"delivering", "delivered", 4, 4},
		}},
		{"a repeated status counts from its first entry; a skipped one joins its neighbours", [][]statusAt{{
			{"persisted", at(0)}, {"queued", at(0)}, {"completed", at(9)}, {"delivering", at(9)}, {"delivering", at(12)}, {"delivered", at(14)},
		}}, []Stage{{"persisted", "queued", 0, 0}, {"queued", "completed", 9, 9}, {"completed", "delivering", 0, 0}, {"delivering", "delivered", 5, 5}}},
		{"p50 and p99 over records", [][]statusAt{
			{{"persisted", at(0)}, {"queued", at(1)}},
			{{"persisted", at(0)}, {"queued", at(3)}},
			{{"persisted", at(0)}, {"queued", at(2)}},
		}, []Stage{{"persisted", "queued", 2, 3}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := summarizeStages(tt.histories); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}
