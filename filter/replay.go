package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"hash"
	"strconv"
	"time"

	"github.com/asyncmesh/asyncmesh/filter/abi"
	"github.com/asyncmesh/asyncmesh/internal/replay"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// A replay is the collector's worker sending an accepted request to the
// service through this Envoy (internal/replay documents the header). It
// passes when, in this order:
//
//  1. the header is version 2, fresh, and signed by an accepted secret over
//     the request id, method, authority and path as this filter sees them and
//     over a body digest (replay.Check);
//  2. its signature was never spent before in this Envoy (replay.Use on
//     shared data, so a signature spent on one worker thread is spent on all);
//  3. its body, buffered here while it arrives (hashed chunk by chunk, so the
//     VM never holds more than a chunk), has that digest. The headers are held
//     meanwhile (holdHeaders; otherwise the buffer filter after this one holds
//     them), so the service sees nothing of a replay whose body was swapped.
//
// Steps 1 and 2 happen at the headers, so that a forged or reused header
// costs no buffering. Envoy buffers the body (up to the listener's buffer
// limit, which must be at least the largest bodyLimit, as for intake on the
// same listener).

// replayCheck is the state of a replay whose headers passed.
type replayCheck struct {
	want   [sha256.Size]byte
	h      hash.Hash
	read   int  // body bytes hashed so far
	passed bool // the body matched (or there was none): the service answers
}

// startReplay runs steps 1 and 2 on a request carrying the replay header.
func (s *stream) startReplay(value, id string, endOfStream bool) abi.Action {
	now := time.Now()
	sig, err := replay.Check(s.p.replaySecrets, value, replay.Request{ID: id, Method: s.method, Authority: s.authority, Path: s.path}, now)
	if err == nil && s.header("content-length") != "" {
		if n, perr := strconv.ParseInt(s.header("content-length"), 10, 64); perr != nil || n < 0 {
			err = replay.ErrMalformed
		} else if n > rules.MaxBodyLimit {
			err = replay.ErrBodyLarge
		}
	}
	if err == nil {
		err = replay.Use(s.p.shared, sig, now)
	}
	if err != nil {
		return s.refuseReplay(err)
	}
	s.host.SetHeader(abi.RequestHeaders, hdrRequestID, id)
	s.rp = &replayCheck{want: sig.Digest}
	if endOfStream {
		if sig.Digest != replay.EmptyDigest {
			return s.refuseReplay(replay.ErrBodyDigest)
		}
		s.rp.passed = true
		return abi.Continue
	}
	s.rp.h = sha256.New()
	if s.p.cfg.HoldHeaders {
		return abi.Pause
	}
	return abi.Continue
}

// replayBody runs step 3 as the body arrives.
func (s *stream) replayBody(size int, endOfStream bool) abi.Action {
	rp := s.rp
	if rp.passed {
		return abi.Continue
	}
	if s.state == stateAnswered {
		return abi.Pause
	}
	if size > rules.MaxBodyLimit {
		return s.refuseReplay(replay.ErrBodyLarge)
	}
	if size < rp.read {
		s.host.Log(abi.LogError, "asyncmesh: replay body shrank from "+itoa(rp.read)+" to "+itoa(size)+" bytes")
		return s.refuseReplay(replay.ErrBodyDigest)
	}
	if size > rp.read {
		// Envoy keeps the body buffered while this filter pauses, and size
		// is all of it so far: only the new bytes are read and hashed.
		b, err := s.host.Buffer(abi.RequestBody, rp.read, size-rp.read)
		if err != nil || len(b) != size-rp.read {
			s.host.Log(abi.LogError, "asyncmesh: reading a replay body: "+errString(err, len(b), size-rp.read))
			return s.refuseReplay(replay.ErrBodyDigest)
		}
		rp.h.Write(b)
		rp.read = size
	}
	if !endOfStream {
		return abi.Pause
	}
	var got [sha256.Size]byte
	rp.h.Sum(got[:0])
	if !hmac.Equal(got[:], rp.want[:]) {
		return s.refuseReplay(replay.ErrBodyDigest)
	}
	rp.passed, rp.h = true, nil
	return abi.Continue // resumes the held headers too
}

func errString(err error, got, want int) string {
	if err != nil {
		return err.Error()
	}
	return "got " + itoa(got) + " of " + itoa(want) + " bytes"
}

// OnRequestTrailers refuses a replay that has trailers: the collector sends
// none, and trailers would end the body without a body callback that sees
// its end, so the body could not be checked. Other streams are unchanged
// (Continue, as when the callback was not exported).
//
// An async request whose body ends with trailers (HTTP/2) is refused with
// 400 as well: its body callback never sees the end of the stream, and
// letting the trailers through would serve it synchronously, while the
// envelope has no place for them.
func (s *stream) OnRequestTrailers(int) abi.Action {
	if s.rp != nil && !s.rp.passed && s.state != stateAnswered {
		return s.refuseReplay(replay.ErrTrailers)
	}
	if s.state == stateBuffering {
		return s.reject(400, "trailers_not_supported", "request trailers: rule "+s.rule.Name+" makes this request async, and async requests carry no trailers")
	}
	return abi.Continue
}

// refuseReplay answers 403 with RefusedHeader, which tells the collector that
// this filter, not the service, refused.
func (s *stream) refuseReplay(err error) abi.Action {
	s.host.Log(abi.LogWarn, "asyncmesh: refused replay header (trace "+s.traceID+"): "+err.Error())
	body, _ := json.Marshal(struct {
		Error   string `json:"error"`
		Reason  string `json:"reason"`
		Message string `json:"message"`
		TraceID string `json:"traceId"`
	}{"replay_refused", replay.Reason(err), replay.Header + ": " + err.Error(), s.traceID})
	s.send(403, "asyncmesh_replay_refused", body, []abi.Header{{replay.RefusedHeader, replay.Reason(err)}})
	return abi.Pause
}

// stripReplayMarker removes RefusedHeader from a service's answer to a
// replay, so that only this filter's own refusal carries it.
func (s *stream) stripReplayMarker() {
	if s.rp != nil && s.state != stateAnswered {
		s.host.RemoveHeader(abi.ResponseHeaders, replay.RefusedHeader)
	}
}

// sharedData adapts the host's shared data to replay.Shared.
type sharedData struct{ h abi.Host }

func (d sharedData) Get(key string) ([]byte, uint32, bool, error) {
	v, cas, err := d.h.SharedData(key)
	if errors.Is(err, abi.ErrNotFound) {
		return nil, 0, false, nil
	}
	if err != nil {
		return nil, 0, false, err
	}
	return v, cas, true, nil
}

func (d sharedData) Set(key string, value []byte, cas uint32) (bool, error) {
	err := d.h.SetSharedData(key, value, cas)
	if errors.Is(err, abi.ErrCASMismatch) {
		return false, nil
	}
	return err == nil, err
}
