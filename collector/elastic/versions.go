package elastic

import (
	"slices"
	"sync"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// Cache bounds: records with small bodies only, so that the cache stays
// within versionsMax × versionBodyMax of bodies.
const (
	versionsMax    = 4096
	versionBodyMax = 16 << 10
)

// version is the last write of a record by this store: the record as written
// and its _seq_no/_primary_term.
type version struct {
	rec       *store.Record
	seq, term int64
}

// versions remembers the last version this store wrote of recent records, so
// that the next compare-and-set on one of them (the common case: intake, worker
// and delivery of a record run in one collector) writes with if_seq_no at once
// instead of reading first. A real-time GET of a document written since the
// last refresh makes Elasticsearch refresh the shard, which under load costs
// more than the write. A stale entry (another collector wrote since) only
// costs a version conflict, after which Transition reads and retries.
type versions struct {
	mu    sync.Mutex
	m     map[string]version
	order []string // insertion order, for eviction
}

func newVersions() *versions { return &versions{m: map[string]version{}} }

// get returns a copy of the cached record that Change.Apply may modify.
func (v *versions) get(id string) (*store.Record, int64, int64, bool) {
	v.mu.Lock()
	e, ok := v.m[id]
	v.mu.Unlock()
	if !ok {
		return nil, 0, 0, false
	}
	r := *e.rec
	// Appends must not write into the cached arrays.
	r.History, r.Attempts = slices.Clip(r.History), slices.Clip(r.Attempts)
	return &r, e.seq, e.term, true
}

func (v *versions) put(r *store.Record, seq, term int64) {
	if bodyLen(r) > versionBodyMax || term == 0 {
		v.drop(r.ID)
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.m[r.ID]; !ok {
		v.order = append(v.order, r.ID)
	}
	v.m[r.ID] = version{rec: r, seq: seq, term: term}
	for len(v.m) > versionsMax && len(v.order) > 0 {
		delete(v.m, v.order[0])
		v.order = v.order[1:]
	}
	if len(v.order) > 2*versionsMax { // ids dropped since: compact
		v.order = slices.DeleteFunc(v.order, func(id string) bool { _, ok := v.m[id]; return !ok })
	}
}

func (v *versions) drop(id string) {
	v.mu.Lock()
	delete(v.m, id)
	v.mu.Unlock()
}

func bodyLen(r *store.Record) int {
	n := 0
	if r.Envelope != nil {
		n += len(r.Envelope.Body)
	}
	if r.Response != nil {
		n += len(r.Response.Body)
	}
	return n
}
