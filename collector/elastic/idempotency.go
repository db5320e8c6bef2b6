package elastic

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/store"
)

// Idempotency keys (store.Idempotent). Elasticsearch has no transaction
// over two documents, so a key is a document of its own, in one index
// (P-idempotency-keys, id = the key's scope hash), written before the
// record:
//
//  1. the key, op_type create: of concurrent intakes with one key, one
//     creates it; the others read it and get a *store.KeyHeldError (or,
//     when it has expired or names the holder they were told to replace,
//     take it over by compare-and-set on its seq_no);
//  2. the record, op_type create, as Create.
//
// A crash (or a failed write) between the two leaves a key that names a
// record that does not exist. No job was made, and none is lost: the
// caller was not answered 202. The collector (judgeHolder) treats such a
// key as held while its intake deadline lasts (the record may still be
// on its way) and as free after it, replacing it by compare-and-set. When
// the record's write failed in a way that may have committed, intake
// abandons it (or writes it dead: deadline.go), which also frees the key.
// A key whose record was written can only be replaced when it expires or
// its record was abandoned: no key makes a second job.

const keysIndexName = "idempotency-keys"

func (s *Store) keysIndex() string { return s.cfg.Prefix + "-" + keysIndexName }

// keysMapping is the strict mapping of the keys index.
var keysMapping = map[string]any{
	"dynamic": "strict",
	"properties": map[string]any{
		"id": keyword, "fingerprint": map[string]any{"type": "keyword", "index": false},
		"expires": date, "deadline": date,
	},
}

// keyDoc is a key as indexed (its scope is the document's id).
type keyDoc struct {
	ID          string    `json:"id"`
	Fingerprint string    `json:"fingerprint"`
	Expires     time.Time `json:"expires"`
	Deadline    time.Time `json:"deadline,omitzero"`
}

// maxKeyRounds bounds the reads and compare-and-sets of one CreateKeyed.
const maxKeyRounds = 5

// CreateKeyed implements store.Idempotent (see above).
func (s *Store) CreateKeyed(ctx context.Context, r *store.Record, k store.Key, m *queue.Message, replace string) error {
	if m != nil {
		return errors.New("elasticsearch: not an outbox: it publishes nothing")
	}
	if k.ID != r.ID {
		return fmt.Errorf("creating record %s: its key names request %s", r.ID, k.ID)
	}
	data, err := json.Marshal(keyDoc{ID: k.ID, Fingerprint: k.Fingerprint, Expires: k.Expires.UTC(), Deadline: k.Deadline.UTC()})
	if err != nil {
		return fmt.Errorf("creating record %s: encoding its key: %w", r.ID, err)
	}
	if err := s.takeKey(ctx, k.Scope, data, replace); err != nil {
		return fmt.Errorf("creating record %s: %w", r.ID, err)
	}
	return s.Create(ctx, r)
}

// takeKey writes the key document data under scope unless a live holder
// other than replace has it.
func (s *Store) takeKey(ctx context.Context, scope string, data []byte, replace string) error {
	ix := s.keysIndex()
	o := &op{action: "create", index: ix, id: scope, doc: data}
	for range maxKeyRounds {
		res := s.batch.do(ctx, o)
		switch {
		case res.err != nil:
			return fmt.Errorf("writing its idempotency key: %w", res.err)
		case res.status/100 == 2:
			return nil
		case res.status != http.StatusConflict:
			return fmt.Errorf("writing its idempotency key: %d %s: %s", res.status, res.errType, res.reason)
		}
		// Held (create), or changed since it was read (compare-and-set).
		got := s.read.get(ctx, ix, scope)
		if got.err != nil {
			return fmt.Errorf("reading the holder of its idempotency key: %w", got.err)
		}
		if !got.found { // expired and deleted meanwhile
			o = &op{action: "create", index: ix, id: scope, doc: data}
			continue
		}
		var h keyDoc
		if err := json.Unmarshal(got.source, &h); err != nil {
			return fmt.Errorf("decoding the holder of its idempotency key: %w", err)
		}
		if h.Expires.After(s.Now()) && h.ID != replace {
			held := store.Key{Scope: scope, ID: h.ID, Fingerprint: h.Fingerprint, Expires: h.Expires, Deadline: h.Deadline}
			return &store.KeyHeldError{Held: held}
		}
		o = &op{action: "index", index: ix, id: scope, doc: data, ifSeqNo: got.seqNo, ifPrimTerm: got.primTerm}
	}
	return fmt.Errorf("writing its idempotency key: still conflicting after %d rounds", maxKeyRounds)
}

// ExpireKeys implements store.Idempotent: it finds the keys expired
// before before and deletes each conditioned on the version it found (a
// key taken over meanwhile is a new version, and kept), a batch at a time,
// as retention deletes records (not by delete-by-query, which needs the
// reindex module).
func (s *Store) ExpireKeys(ctx context.Context, before time.Time) (int, error) {
	ix := s.keysIndex()
	opts := "allow_no_indices=true&ignore_unavailable=true"
	total := 0
	for {
		// The search sees what the last refresh made visible: the keys
		// written just now, and the deletes of the last round.
		if err := s.call(ctx, http.MethodPost, "/"+ix+"/_refresh?"+opts, nil, nil); err != nil {
			return total, fmt.Errorf("expiring idempotency keys: %w", err)
		}
		body := map[string]any{
			"size": expireBatch, "seq_no_primary_term": true, "_source": false,
			"query": map[string]any{"range": map[string]any{"expires": map[string]any{"lt": before.UTC().Format(time.RFC3339Nano)}}},
		}
		var res struct {
			Hits struct {
				Hits []struct {
					ID       string `json:"_id"`
					SeqNo    int64  `json:"_seq_no"`
					PrimTerm int64  `json:"_primary_term"`
				} `json:"hits"`
			} `json:"hits"`
		}
		if err := s.call(ctx, http.MethodPost, "/"+ix+"/_search?track_total_hits=false&"+opts, body, &res); err != nil {
			return total, fmt.Errorf("searching for expired idempotency keys: %w", err)
		}
		hits := res.Hits.Hits
		if len(hits) == 0 {
			return total, nil
		}
		var bulk bytes.Buffer
		for _, h := range hits {
			writeBulkDelete(&bulk, ix, h.ID, h.SeqNo, h.PrimTerm)
		}
		deleted, err := s.bulkDelete(ctx, bulk.Bytes())
		total += len(deleted)
		if err != nil {
			return total, fmt.Errorf("deleting expired idempotency keys: %w", err)
		}
		if len(hits) < expireBatch || len(deleted) == 0 {
			return total, nil
		}
	}
}

var _ store.Idempotent = (*Store)(nil)
