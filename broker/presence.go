package broker

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

const (
	// lastSeenEvery is how often devices that sent packets get last_seen
	// moved forward: one registry transaction for all of them.
	lastSeenEvery = 30 * time.Second
	// presenceWriteTimeout bounds one registry write.
	presenceWriteTimeout = 10 * time.Second
	// presenceAttempts: a state that failed this many writes is dropped
	// (e.g. the device was deleted while connected) instead of retried.
	presenceAttempts = 3
)

type presenceState struct {
	online   bool
	at       time.Time
	attempts int
}

// presence moves connection state and last-seen times to the registry on
// a goroutine of its own, so mochi's callbacks never wait for SQLite.
// Pending states are coalesced per device (only the latest counts), so the
// memory is bounded by the number of devices, and callers never block.
type presence struct {
	store PresenceStore
	log   *slog.Logger
	m     *metrics
	every time.Duration

	mu      sync.Mutex
	pending map[string]presenceState
	seen    map[string]time.Time

	notify chan struct{} // capacity 1: "pending changed"
	stop   chan context.Context
	done   chan struct{}
}

func newPresence(store PresenceStore, log *slog.Logger, m *metrics) *presence {
	return &presence{
		store:   store,
		log:     log,
		m:       m,
		every:   lastSeenEvery,
		pending: make(map[string]presenceState),
		seen:    make(map[string]time.Time),
		notify:  make(chan struct{}, 1),
		stop:    make(chan context.Context),
		done:    make(chan struct{}),
	}
}

func (p *presence) set(id string, online bool, at time.Time) {
	if p.store == nil {
		return
	}
	p.mu.Lock()
	p.pending[id] = presenceState{online: online, at: at}
	p.mu.Unlock()
	select {
	case p.notify <- struct{}{}:
	default:
	}
}

// touch notes that a device sent a packet; flushed every p.every.
func (p *presence) touch(id string, at time.Time) {
	if p.store == nil {
		return
	}
	p.mu.Lock()
	p.seen[id] = at
	p.mu.Unlock()
}

func (p *presence) run() {
	defer close(p.done)
	tick := time.NewTicker(p.every)
	defer tick.Stop()
	for {
		select {
		case <-p.notify:
			p.flushStates(context.Background())
		case <-tick.C:
			p.flushStates(context.Background())
			p.flushSeen(context.Background())
		case ctx := <-p.stop:
			p.flushStates(ctx)
			p.flushSeen(ctx)
			return
		}
	}
}

// close flushes what is pending within ctx and stops the goroutine.
func (p *presence) close(ctx context.Context) {
	select {
	case p.stop <- ctx:
		<-p.done
	case <-p.done:
	}
}

func (p *presence) flushStates(ctx context.Context) {
	p.mu.Lock()
	if len(p.pending) == 0 {
		p.mu.Unlock()
		return
	}
	batch := p.pending
	p.pending = make(map[string]presenceState, len(batch))
	p.mu.Unlock()

	var failed map[string]presenceState
	for id, s := range batch {
		wctx, cancel := context.WithTimeout(ctx, presenceWriteTimeout)
		err := p.store.SetPresence(wctx, id, s.online, s.at)
		cancel()
		if err == nil {
			continue
		}
		p.m.presenceErrors.WithLabelValues("set_presence").Inc()
		s.attempts++
		if s.attempts >= presenceAttempts || ctx.Err() != nil {
			p.log.Error("device presence not recorded", "id", id, "online", s.online, "error", err)
			continue
		}
		p.log.Warn("device presence not recorded; will retry", "id", id, "online", s.online, "error", err)
		if failed == nil {
			failed = make(map[string]presenceState)
		}
		failed[id] = s
	}
	if len(failed) == 0 {
		return
	}
	// Retry on the next tick, unless a newer state arrived meanwhile.
	p.mu.Lock()
	for id, s := range failed {
		if _, newer := p.pending[id]; !newer {
			p.pending[id] = s
		}
	}
	p.mu.Unlock()
}

func (p *presence) flushSeen(ctx context.Context) {
	p.mu.Lock()
	if len(p.seen) == 0 {
		p.mu.Unlock()
		return
	}
	batch := p.seen
	p.seen = make(map[string]time.Time, len(batch))
	p.mu.Unlock()

	wctx, cancel := context.WithTimeout(ctx, presenceWriteTimeout)
	err := p.store.TouchLastSeen(wctx, batch)
	cancel()
	if err == nil {
		return
	}
	p.m.presenceErrors.WithLabelValues("touch_last_seen").Inc()
	p.log.Warn("last seen times not recorded; will retry", "devices", len(batch), "error", err)
	if ctx.Err() != nil {
		return
	}
	p.mu.Lock()
	for id, at := range batch {
		if cur, ok := p.seen[id]; !ok || cur.Before(at) {
			p.seen[id] = at
		}
	}
	p.mu.Unlock()
}
