package replay

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"time"
)

// Shared is a key-value store shared by every VM of one Envoy process with
// compare-and-set, as Envoy's proxy_get_shared_data / proxy_set_shared_data
// are (per vm_id: every worker thread's VM sees the same data).
type Shared interface {
	// Get returns key's value and CAS; found is false when key is absent.
	Get(key string) (value []byte, cas uint32, found bool, err error)
	// Set stores value under key if key's CAS is still cas; cas 0 sets it
	// unconditionally (and an absent key is always created: the host has no
	// "only if absent"). ok is false on a CAS mismatch.
	Set(key string, value []byte, cas uint32) (ok bool, err error)
}

// The table of spent signatures. A signature is accepted only within MaxSkew
// of its t, so it has to be remembered only until then: entries are kept in
// time buckets of bucketWidth seconds (by the signature's t), and a bucket's
// slot is reused for a later bucket once no signature of it can be valid any
// more. The slots form a ring of ringSlots × shards keys
// ("asyncmesh.replay.<slot>.<shard>"); a signature's shard is taken from its
// MAC, which nobody without the secret can choose. Each key holds the bucket
// number (8 bytes) and the spent MACs' first entryLen bytes, so the table
// never grows beyond ringSlots × shards × maxEntries entries (24 MiB), and one
// replay copies one key's value (at 1000 replays/s about 7 KiB) in and out.
//
// Keys are created once, when the filter is configured (Prepare), and from
// then on only ever changed by compare-and-set, so two workers spending
// signatures of the same key at once cannot lose each other's entry: the
// loser of the CAS reads again. The host cannot create a key only if it is
// absent, so the one window left is the very first creation of a key by two
// VMs configured at once while a third spends a signature in between; it
// closes as soon as any VM has configured.
const (
	bucketWidth = 15 // seconds
	// ringSlots must exceed the number of buckets a valid t can fall in:
	// (2·MaxSkew)/bucketWidth + 1 = 9.
	ringSlots  = 12
	shards     = 32
	entryLen   = 16 // bytes of the MAC kept: 128 bits, collisions never happen by chance
	maxEntries = 4096
	casTries   = 16
	keyPrefix  = "asyncmesh.replay."
	header     = 8 // the bucket number
)

func init() {
	if int64(ringSlots)*bucketWidth <= 2*int64(MaxSkew/time.Second)+bucketWidth {
		panic("replay: ringSlots too small for MaxSkew")
	}
}

func slotKey(slot, shard int) string {
	return keyPrefix + strconv.Itoa(slot) + "." + strconv.Itoa(shard)
}

// Prepare creates the table's keys that do not exist yet (empty). The filter
// calls it when it is configured, before any replay is served.
func Prepare(sh Shared) error {
	for slot := range ringSlots {
		for shard := range shards {
			k := slotKey(slot, shard)
			_, _, found, err := sh.Get(k)
			if err != nil {
				return fmt.Errorf("reading %s: %w", k, err)
			}
			if found {
				continue
			}
			if _, err := sh.Set(k, nil, 0); err != nil {
				return fmt.Errorf("creating %s: %w", k, err)
			}
		}
	}
	return nil
}

// Use spends signature s: nil the first time, ErrUsed every time after
// within its validity. Any trouble with the table is ErrTable: the replay is
// refused (the collector retries with a new signature) rather than let
// through unrecorded. Check s (time and signature) before: Use trusts both.
func Use(sh Shared, s Signed, now time.Time) error {
	bucket := floorDiv(s.T, bucketWidth)
	slot := int(mod(bucket, ringSlots))
	shard := int(s.MAC[entryLen] % shards) // a byte not kept in the entry
	key := slotKey(slot, shard)
	entry := s.MAC[:entryLen]
	for range casTries {
		v, cas, found, err := sh.Get(key)
		if err != nil {
			return fmt.Errorf("%w: reading %s: %v", ErrTable, key, err)
		}
		var entries []byte
		if found && len(v) >= header && (len(v)-header)%entryLen == 0 {
			switch held := int64(binary.BigEndian.Uint64(v)); {
			case held == bucket:
				entries = v[header:]
			case held > bucket:
				// A later bucket in this slot: t is older than anything this
				// slot can remember, which Check's skew excludes unless the
				// clock went back. Refuse rather than forget the newer one.
				return fmt.Errorf("%w: %s holds a later time bucket (clock stepped back?)", ErrTable, key)
			}
			// held < bucket: every signature of that bucket has expired.
		}
		// (Absent, empty as Prepare left it, or not ours: start afresh.)
		for i := 0; i+entryLen <= len(entries); i += entryLen {
			if string(entries[i:i+entryLen]) == string(entry) {
				return ErrUsed
			}
		}
		if len(entries)/entryLen >= maxEntries {
			return fmt.Errorf("%w: %s is full (%d replays in %ds)", ErrTable, key, maxEntries, bucketWidth)
		}
		next := make([]byte, header, header+len(entries)+entryLen)
		binary.BigEndian.PutUint64(next, uint64(bucket))
		next = append(append(next, entries...), entry...)
		if !found {
			cas = 0
		}
		ok, err := sh.Set(key, next, cas)
		if err != nil {
			return fmt.Errorf("%w: writing %s: %v", ErrTable, key, err)
		}
		if ok {
			return nil
		}
		// Another worker changed the key since we read it: read again.
	}
	return fmt.Errorf("%w: %s still contended after %d tries", ErrTable, key, casTries)
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

func mod(a, b int64) int64 {
	m := a % b
	if m < 0 {
		m += b
	}
	return m
}
