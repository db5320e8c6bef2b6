package delivery

import "errors"

// maxConns bounds each protocol's pool of callback connections; past it the
// oldest is closed (callers are few, so this is a safety bound, not a policy).
const maxConns = 256

var errClosed = errors.New("delivery: sender closed")

// connCache keeps one connection per key (target + credentials + guard), in
// insertion order for eviction. The Sender's mutex guards it.
type connCache[C comparable] struct {
	conns map[string]C
	order []string
}

// get returns the connection of key, dialing one if there is none; stale
// reports a connection that must be replaced. Called with the mutex held.
func (c *connCache[C]) get(key string, stale func(C) bool, dial func() (C, error), closeFn func(C)) (C, error) {
	if conn, ok := c.conns[key]; ok && !stale(conn) {
		return conn, nil
	}
	c.drop(key, closeFn)
	conn, err := dial()
	if err != nil {
		return conn, err
	}
	if c.conns == nil {
		c.conns = map[string]C{}
	}
	if len(c.order) >= maxConns {
		c.drop(c.order[0], closeFn)
	}
	c.conns[key] = conn
	c.order = append(c.order, key)
	return conn, nil
}

// drop closes and forgets the connection of key, if any.
func (c *connCache[C]) drop(key string, closeFn func(C)) {
	conn, ok := c.conns[key]
	if !ok {
		return
	}
	closeFn(conn)
	delete(c.conns, key)
	for i, k := range c.order {
		if k == key {
			c.order = append(c.order[:i], c.order[i+1:]...)
			break
		}
	}
}

// dropIf forgets key's connection only if it is still conn.
func (c *connCache[C]) dropIf(key string, conn C, closeFn func(C)) {
	if cur, ok := c.conns[key]; ok && cur == conn {
		c.drop(key, closeFn)
	}
}

func (c *connCache[C]) closeAll(closeFn func(C)) {
	for _, k := range append([]string(nil), c.order...) {
		c.drop(k, closeFn)
	}
}
