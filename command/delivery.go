package command

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Message is the payload of a command on devices/{id}/commands/{name}.
type Message struct {
	ID        string          `json:"id"`
	Name      string          `json:"name"`
	Params    json.RawMessage `json:"params"`
	ExpiresAt time.Time       `json:"expires_at"`
}

// devState is what the service knows about one device's connection. Its
// mutex also serializes deliveries to the device, so commands go out in
// creation order however Send calls and subscribe events interleave.
type devState struct {
	mu        sync.Mutex
	connected bool
	// epoch identifies the current connection (unique across devices and
	// reconnects), so a command is published at most once per connection.
	epoch   uint64
	filters []string // granted subscriptions of this connection
}

func (d *devState) matches(topic string) bool {
	for _, f := range d.filters {
		if MatchFilter(f, topic) {
			return true
		}
	}
	return false
}

func (s *Service) dev(id string, create bool) *devState {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.devs[id]
	if d == nil && create {
		d = &devState{}
		s.devs[id] = d
	}
	return d
}

// The broker.Observer side. The broker calls these from its clients'
// goroutines and they must not block: each only appends to the event
// queue, which one worker goroutine drains in order.

// DeviceConnected notes a new connection; nothing is published before the
// device subscribes.
func (s *Service) DeviceConnected(id string, protocolVersion byte) {
	s.events.push(event{kind: evConnected, device: id})
}

// DeviceDisconnected forgets the device's subscriptions.
func (s *Service) DeviceDisconnected(id string) {
	s.events.push(event{kind: evDisconnected, device: id})
}

// DeviceSubscribed delivers the device's pending commands whose topic the
// filter matches, and its desired twin state after a hub restart.
func (s *Service) DeviceSubscribed(id, filter string) {
	s.events.push(event{kind: evSubscribed, device: id, topic: filter})
}

// Delivered marks a command delivered when the device acknowledged it.
func (s *Service) Delivered(id, topic string, payload []byte) {
	s.events.push(event{kind: evDelivered, device: id, topic: topic, payload: payload})
}

type eventKind uint8

const (
	evConnected eventKind = iota
	evDisconnected
	evSubscribed
	evDelivered
)

type event struct {
	kind    eventKind
	device  string
	topic   string
	payload []byte
}

// eventQueue is an unbounded FIFO: broker callbacks may never block, and
// dropping a subscribe or disconnect event would leave the device's state
// wrong. Events are small and their rate is bounded by the devices'
// packets.
type eventQueue struct {
	mu     sync.Mutex
	items  []event
	signal chan struct{}
	closed bool
}

func newEventQueue() *eventQueue { return &eventQueue{signal: make(chan struct{}, 1)} }

func (q *eventQueue) push(e event) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	q.items = append(q.items, e)
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

// take returns the queued events, blocking until there are some; ok is
// false once the queue is closed.
func (q *eventQueue) take(buf []event) ([]event, bool) {
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return nil, false
		}
		if len(q.items) > 0 {
			buf = append(buf[:0], q.items...)
			clear(q.items)
			q.items = q.items[:0]
			q.mu.Unlock()
			return buf, true
		}
		q.mu.Unlock()
		<-q.signal
	}
}

func (q *eventQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

func (s *Service) runEvents() {
	defer s.wg.Done()
	var buf []event
	for {
		var ok bool
		buf, ok = s.events.take(buf)
		if !ok {
			return
		}
		for _, e := range buf {
			s.handleEvent(e)
		}
	}
}

func (s *Service) handleEvent(e event) {
	ctx, cancel := context.WithTimeout(s.ctx, opTimeout)
	defer cancel()
	switch e.kind {
	case evConnected:
		d := s.dev(e.device, true)
		s.mu.Lock()
		s.epoch++
		ep := s.epoch
		s.mu.Unlock()
		d.mu.Lock()
		d.connected, d.epoch, d.filters = true, ep, nil
		d.mu.Unlock()
	case evDisconnected:
		if d := s.dev(e.device, false); d != nil {
			d.mu.Lock()
			d.connected, d.filters = false, nil
			d.mu.Unlock()
		}
	case evSubscribed:
		d := s.dev(e.device, true)
		d.mu.Lock()
		if !d.connected {
			// A subscribe without a connect event: the connect happened
			// before this service observed the broker. Count it as one.
			s.mu.Lock()
			s.epoch++
			d.connected, d.epoch = true, s.epoch
			s.mu.Unlock()
		}
		d.filters = append(d.filters, e.topic)
		d.mu.Unlock()
		// Any filter that covers a command topic: commands/#, commands/+,
		// commands/{name} (deliver checks each command against the filters).
		if MatchFilter(e.topic, telemetry.CommandTopic(e.device, "x")) || strings.HasPrefix(e.topic, telemetry.CommandTopic(e.device, "")) {
			if err := s.deliver(ctx, e.device); err != nil && s.ctx.Err() == nil {
				s.log.Warn("deliver pending commands", "device", e.device, "error", err)
			}
		}
		if MatchFilter(e.topic, telemetry.TwinDesiredTopic(e.device)) {
			if err := s.republishDesired(ctx, e.device); err != nil && s.ctx.Err() == nil {
				s.log.Warn("publish desired twin", "device", e.device, "error", err)
			}
		}
	case evDelivered:
		s.delivered(ctx, e)
	}
}

// deliver publishes the device's pending commands that this connection
// has not had yet, oldest first, if the device is connected and subscribed
// to their topics. queued ones become sent (stored before publishing);
// sent ones from an earlier connection or an earlier hub process are
// published again (QoS 1 is at-least-once anyway; devices deduplicate by
// id); delivered ones are never sent again. Overdue ones expire instead.
func (s *Service) deliver(ctx context.Context, device string) error {
	d := s.dev(device, false)
	if d == nil {
		return nil // never seen connected
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.connected || len(d.filters) == 0 || !s.pub.Connected(device) {
		return nil
	}
	cmds, err := s.ledger.PendingCommands(ctx, device)
	if err != nil {
		return err
	}
	for _, c := range cmds {
		topic := telemetry.CommandTopic(device, c.Name)
		if c.State == registry.CommandDelivered || !d.matches(topic) {
			continue
		}
		now := time.Now()
		if !c.ExpiresAt.IsZero() && !now.Before(c.ExpiresAt) {
			// Never deliver an expired command, even if its timer is late.
			if _, err := s.finish(ctx, c.ID, registry.CommandExpired, nil, "", "expired before delivery"); err != nil && !errors.Is(err, ErrFinal) {
				return err
			}
			continue
		}
		switch c.State {
		case registry.CommandQueued:
			c2, err := s.ledger.TransitionCommand(ctx, c.ID, []registry.CommandState{registry.CommandQueued}, registry.CommandSent,
				time.Time{}, nil, "", "published to "+topic)
			if errors.Is(err, registry.ErrConflict) {
				continue // cancelled or expired meanwhile
			} else if err != nil {
				return err
			}
			s.announce(c2, registry.CommandQueued, registry.CommandSent)
			c = c2
		case registry.CommandSent:
			s.mu.Lock()
			ep, ok := s.sentIn[c.ID]
			s.mu.Unlock()
			if ok && ep == d.epoch {
				continue // already published on this connection
			}
			// Recorded for the history; not a state change, so not announced.
			if _, err := s.ledger.TransitionCommand(ctx, c.ID, []registry.CommandState{registry.CommandSent}, registry.CommandSent,
				time.Time{}, nil, "", "published again to "+topic+" (not acknowledged before)"); errors.Is(err, registry.ErrConflict) {
				continue
			} else if err != nil {
				return err
			}
		}
		s.mu.Lock()
		s.sentIn[c.ID] = d.epoch
		s.mu.Unlock()
		if err := s.publishCommand(c, now); err != nil {
			// Stays sent; the next subscribe publishes it again.
			s.m.publishErrors.Inc()
			return fmt.Errorf("publish command %s: %w", c.ID, err)
		}
	}
	return nil
}

func (s *Service) publishCommand(c registry.Command, now time.Time) error {
	msg := Message{ID: c.ID, Name: c.Name, Params: c.Params, ExpiresAt: c.ExpiresAt.UTC()}
	if len(msg.Params) == 0 {
		msg.Params = json.RawMessage("{}")
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	opts := PublishOptions{
		ResponseTopic:   telemetry.ReplyTopic(c.Device, c.ID),
		CorrelationData: []byte(c.ID),
		ContentType:     "application/json",
	}
	if !c.ExpiresAt.IsZero() {
		// MQTT 5 §3.3.2.3.3: the broker drops the message once this has
		// passed, so a slow or reconnecting device never gets it late.
		opts.MessageExpiry = c.ExpiresAt.Sub(now)
	}
	return s.pub.Publish(telemetry.CommandTopic(c.Device, c.Name), b, opts)
}

// delivered handles the device's PUBACK of a command. The command id is
// read from the payload the hub published (the topic names the command,
// not the instance).
func (s *Service) delivered(ctx context.Context, e event) {
	if e.topic != "" {
		if t := telemetry.ParseTopic(e.topic); t.Kind != telemetry.TopicCommand || t.Device != e.device {
			return // a twin or error message
		}
	}
	var m struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(e.payload, &m) != nil || m.ID == "" {
		return
	}
	c, err := s.ledger.TransitionCommand(ctx, m.ID, []registry.CommandState{registry.CommandSent}, registry.CommandDelivered,
		time.Time{}, nil, "", "acknowledged by the device (PUBACK)")
	switch {
	case err == nil:
		if c.Device != e.device {
			return // cannot happen: the broker delivered to this device
		}
		s.announce(c, registry.CommandSent, registry.CommandDelivered)
	case errors.Is(err, registry.ErrConflict), errors.Is(err, registry.ErrNotFound):
		// Replied, expired or cancelled before the PUBACK was processed.
	default:
		if s.ctx.Err() == nil {
			s.log.Warn("record delivery", "id", m.ID, "error", err)
		}
	}
}

// MatchFilter reports whether an MQTT topic filter matches a topic name
// (MQTT 5 §4.7: '+' one level, '#' the rest, including the parent level).
func MatchFilter(filter, topic string) bool {
	for {
		f, frest, fmore := strings.Cut(filter, "/")
		if f == "#" {
			return true
		}
		t, trest, tmore := strings.Cut(topic, "/")
		if f != "+" && f != t {
			return false
		}
		if !fmore || !tmore {
			// Both end here, or "a/#" matches "a" ([MQTT-4.7.1-2]).
			return fmore == tmore || (fmore && frest == "#")
		}
		filter, topic = frest, trest
	}
}
