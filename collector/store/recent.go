package store

import (
	"slices"
	"sync"
)

// Recent bounds: records with small bodies only, so that the cache stays
// within recentMax × recentBodyMax of bodies.
const (
	recentMax     = 4096
	recentBodyMax = 16 << 10
)

// Version is a backend's revision of a stored record: Elasticsearch's
// _seq_no and _primary_term, the embedded store's version counter in Seq.
type Version struct{ Seq, Term int64 }

type recentEntry struct {
	rec *Record
	ver Version
}

// Recent remembers the last version a store wrote of recent records, so that
// the next compare-and-set on one of them (the common case: intake, worker
// and delivery of a record run in one collector) writes at once, conditioned
// on that version, instead of reading and decoding the record first. On
// Elasticsearch the read would be a real-time GET, which refreshes the shard
// when the document is newer than the last refresh; on the embedded store it
// is a JSON decode. A stale entry (another collector wrote since) only costs
// a version conflict, after which the store reads and retries.
type Recent struct {
	mu    sync.Mutex
	m     map[string]recentEntry
	order []string // insertion order, for eviction
}

// NewRecent returns an empty cache.
func NewRecent() *Recent { return &Recent{m: map[string]recentEntry{}} }

// Get returns a copy of the cached record, which Change.Apply may modify.
func (v *Recent) Get(id string) (*Record, Version, bool) {
	v.mu.Lock()
	e, ok := v.m[id]
	v.mu.Unlock()
	if !ok {
		return nil, Version{}, false
	}
	r := *e.rec
	// Appends must not write into the cached arrays.
	r.History, r.Attempts = slices.Clip(r.History), slices.Clip(r.Attempts)
	return &r, e.ver, true
}

// Put remembers r as written at version ver. It keeps a shallow copy: the
// caller may go on setting r's fields (a worker replaces the envelope with its
// live-rule view), which must not reach the next write. A record in a
// terminal status is forgotten instead: nothing moves it again but an
// operator's replay, which can afford a read, and after a burst the cache
// would otherwise hold its last recentMax records (and their bodies) for as
// long as the collector stays idle.
func (v *Recent) Put(r *Record, ver Version) {
	if bodyLen(r) > recentBodyMax || r.Status.Terminal() {
		v.Drop(r.ID)
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.m[r.ID]; !ok {
		v.order = append(v.order, r.ID)
	}
	cp := *r
	cp.History, cp.Attempts = slices.Clip(cp.History), slices.Clip(cp.Attempts)
	v.m[r.ID] = recentEntry{rec: &cp, ver: ver}
	for len(v.m) > recentMax && len(v.order) > 0 {
		delete(v.m, v.order[0])
		v.order = v.order[1:]
	}
	if len(v.order) > 2*recentMax { // ids dropped since: compact
		v.order = slices.DeleteFunc(v.order, func(id string) bool { _, ok := v.m[id]; return !ok })
	}
}

// Drop forgets id. The last one out lets the map and the eviction order go:
// a map keeps its buckets when emptied, and an idle collector has nothing
// cached once its records are done.
func (v *Recent) Drop(id string) {
	v.mu.Lock()
	delete(v.m, id)
	if len(v.m) == 0 && len(v.order) > 0 {
		v.m, v.order = map[string]recentEntry{}, nil
	}
	v.mu.Unlock()
}

func bodyLen(r *Record) int {
	n := 0
	if r.Envelope != nil {
		n += len(r.Envelope.Body)
	}
	if r.Response != nil {
		n += len(r.Response.Body)
	}
	return n
}
