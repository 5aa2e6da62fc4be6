package command

import (
	"sync"

	"github.com/fieldhub/fieldhub/registry"
)

// Change is one stored transition of a command. From is "" for a new
// (queued) command.
type Change struct {
	Command registry.Command
	From    registry.CommandState
	To      registry.CommandState
}

// listener feeds one Subscribe callback from its own goroutine through a
// bounded queue, so a slow callback never holds up the service: when its
// queue is full, changes for it are dropped and counted
// (fieldhub_command_changes_dropped_total).
type listener struct {
	ch        chan Change
	done      chan struct{}
	closeOnce sync.Once
}

// offer queues c without blocking; the service's mu is held.
func (l *listener) offer(c Change, m *metrics) {
	select {
	case l.ch <- c:
	default:
		m.changesDropped.Inc()
	}
}

func (l *listener) close() {
	l.closeOnce.Do(func() { close(l.ch) })
	<-l.done
}

// Subscribe calls fn with every command transition after it is stored, in
// order, from a goroutine of its own. A listener that falls behind by more
// than Options.ListenerBuffer changes misses changes (counted). The
// returned function unsubscribes and waits for fn to return; Stop
// unsubscribes everyone.
func (s *Service) Subscribe(fn func(Change)) (unsubscribe func()) {
	l := &listener{ch: make(chan Change, s.lbuf), done: make(chan struct{})}
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return func() {}
	}
	id := s.nextL
	s.nextL++
	s.listeners[id] = l
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer close(l.done)
		for c := range l.ch {
			fn(c)
		}
	}()
	return func() {
		s.mu.Lock()
		delete(s.listeners, id)
		s.mu.Unlock()
		l.close()
	}
}
