// Package command is the command lifecycle and the device twin. It sends
// commands to devices over MQTT and follows each through the ledger kept in
// the registry:
//
//	queued ──> sent ──> delivered ──> succeeded | failed
//	   │         │          │
//	   └─────────┴──────────┴──────> expired | cancelled
//
// queued: stored, not yet published (the device is offline or not
// subscribed). sent: published to the connected, subscribed device.
// delivered: the device's PUBACK. succeeded/failed: the device's reply.
// expired: its timeout passed first. cancelled: an operator cancelled it.
//
// Every transition is stored in the ledger before it is announced (published
// to the device, or told to listeners and waiters), so after a crash the
// ledger is never behind what anyone saw. After a restart Start expires the
// overdue commands and re-arms the timers of the rest; pending commands are
// (re)delivered when their device subscribes, except those it already
// acknowledged (delivered).
package command

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Ledger stores commands and twins (satisfied by *registry.Registry).
type Ledger interface {
	InsertCommand(ctx context.Context, c registry.Command) (registry.Command, bool, error)
	TransitionCommand(ctx context.Context, id string, from []registry.CommandState, to registry.CommandState, at time.Time,
		result json.RawMessage, errText, detail string) (registry.Command, error)
	Command(ctx context.Context, id string) (registry.Command, error)
	Commands(ctx context.Context, f registry.CommandFilter) ([]registry.Command, error)
	PendingCommands(ctx context.Context, device string) ([]registry.Command, error)
	CommandHistory(ctx context.Context, id string) ([]registry.Transition, error)

	SetDesired(ctx context.Context, device string, doc json.RawMessage, at time.Time) (registry.TwinDoc, error)
	SetReported(ctx context.Context, device string, doc json.RawMessage, at time.Time) (registry.TwinDoc, error)
	Twin(ctx context.Context, device string) (registry.Twin, error)
}

// Publisher sends hub-to-device messages, always at QoS 1 (the hub wires it
// to the embedded broker).
type Publisher interface {
	Publish(topic string, payload []byte, opts PublishOptions) error
	// Connected reports whether the device has a session right now.
	Connected(id string) bool
}

// PublishOptions are the MQTT 5 properties and flags of a publish; 3.1.1
// subscribers get the payload only.
type PublishOptions struct {
	Retain          bool
	ResponseTopic   string
	CorrelationData []byte
	MessageExpiry   time.Duration
	ContentType     string
}

// Sentinel errors; test with errors.Is. ErrInvalid and ErrNotFound are the
// registry's, so one check covers both layers.
var (
	ErrInvalid  = registry.ErrInvalid
	ErrNotFound = registry.ErrNotFound
	// ErrFinal: the command already reached a final state (it wraps
	// registry.ErrConflict).
	ErrFinal = fmt.Errorf("command is already final: %w", registry.ErrConflict)
	// ErrRejected marks an invalid device message (a malformed twin
	// report); the hub turns it into the broker's negative acknowledgement.
	ErrRejected = errors.New("message rejected")
	// ErrStopped: the service is stopping (Wait was interrupted).
	ErrStopped = errors.New("command service stopped")
)

// Defaults for Options.
const (
	DefaultTimeout    = 5 * time.Minute
	DefaultMaxTimeout = 7 * 24 * time.Hour
	// MaxParamsBytes bounds a command's params; commands are instructions,
	// not file transfers, and must fit the broker's packet limit.
	MaxParamsBytes = 64 << 10
	maxNameLen     = 64
	maxErrorLen    = 4096
	// opTimeout bounds ledger work done on behalf of a broker callback or
	// timer, which has no caller context.
	opTimeout = 30 * time.Second
)

// Options configure a Service. Ledger and Publisher are required.
type Options struct {
	Ledger    Ledger
	Publisher Publisher
	// DefaultTimeout applies to a command sent without one; MaxTimeout is
	// the longest a command may ask for (commands.default_timeout and
	// commands.max_timeout).
	DefaultTimeout time.Duration
	MaxTimeout     time.Duration
	Logger         *slog.Logger
	Registerer     prometheus.Registerer
	// ListenerBuffer is each Subscribe listener's queue length (default 1024).
	ListenerBuffer int
}

// Service runs the command lifecycle. Create it with New, register it with
// the broker (it is a broker observer; HandleReply and HandleReported are
// its message handlers), Start it, and Stop it.
type Service struct {
	ledger     Ledger
	pub        Publisher
	log        *slog.Logger
	m          *metrics
	defTimeout time.Duration
	maxTimeout time.Duration
	lbuf       int

	ctx    context.Context // cancelled by Stop
	cancel context.CancelFunc
	wg     sync.WaitGroup // the event worker, expiry callbacks, listeners

	events   *eventQueue
	stopping chan struct{} // closed by StopWaiting

	mu        sync.Mutex
	started   bool
	stopped   bool
	stopOnce  sync.Once
	devs      map[string]*devState
	epoch     uint64                     // connection counter, see devState.epoch
	timers    map[string]*time.Timer     // expiry of each pending command
	sentIn    map[string]uint64          // command id -> connection epoch it was last published on
	waiters   map[string][]chan struct{} // command id -> Wait calls
	listeners map[uint64]*listener
	nextL     uint64

	twinMu        sync.Mutex       // orders desired-state publishes
	twinPublished map[string]int64 // device -> desired version retained in the broker by this process
}

// New checks the options and returns a stopped Service.
func New(o Options) (*Service, error) {
	if o.Ledger == nil || o.Publisher == nil {
		return nil, errors.New("command service: Ledger and Publisher are required")
	}
	if o.DefaultTimeout == 0 {
		o.DefaultTimeout = DefaultTimeout
	}
	if o.MaxTimeout == 0 {
		o.MaxTimeout = max(DefaultMaxTimeout, o.DefaultTimeout)
	}
	if o.DefaultTimeout < 0 || o.MaxTimeout < o.DefaultTimeout {
		return nil, fmt.Errorf("command service: default timeout %s must be positive and at most the max timeout %s", o.DefaultTimeout, o.MaxTimeout)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ListenerBuffer <= 0 {
		o.ListenerBuffer = 1024
	}
	s := &Service{
		ledger: o.Ledger, pub: o.Publisher, log: o.Logger,
		defTimeout: o.DefaultTimeout, maxTimeout: o.MaxTimeout, lbuf: o.ListenerBuffer,
		events: newEventQueue(), stopping: make(chan struct{}),
		devs: map[string]*devState{}, timers: map[string]*time.Timer{}, sentIn: map[string]uint64{},
		waiters: map[string][]chan struct{}{}, listeners: map[uint64]*listener{}, twinPublished: map[string]int64{},
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	m, err := newMetrics(o.Registerer, s.pendingCount)
	if err != nil {
		return nil, fmt.Errorf("command service: %w", err)
	}
	s.m = m
	return s, nil
}

// Start resumes the ledger: it expires the pending commands whose time
// passed while the hub was down, arms the expiry timers of the others and
// starts handling broker events. Pending commands go out when their device
// subscribes.
func (s *Service) Start(ctx context.Context) error {
	s.mu.Lock()
	if s.started || s.stopped {
		s.mu.Unlock()
		return errors.New("start command service: already started or stopped")
	}
	s.started = true
	s.wg.Add(1)
	s.mu.Unlock()
	go s.runEvents()

	pending, err := s.ledger.PendingCommands(ctx, "")
	if err != nil {
		return fmt.Errorf("start command service: %w", err)
	}
	now := time.Now()
	var expired int
	for _, c := range pending {
		if !c.ExpiresAt.IsZero() && !now.Before(c.ExpiresAt) {
			if _, err := s.finish(ctx, c.ID, registry.CommandExpired, nil, "", "expired while the hub was down"); err != nil && !errors.Is(err, ErrFinal) {
				return fmt.Errorf("start command service: %w", err)
			}
			expired++
			continue
		}
		s.arm(c)
	}
	s.log.Info("command ledger resumed", "pending", len(pending)-expired, "expired", expired)
	return nil
}

// StopWaiting wakes every Wait call with ErrStopped. The hub calls it when
// its HTTP server starts shutting down, so long polls do not hold that up.
func (s *Service) StopWaiting() {
	s.stopOnce.Do(func() { close(s.stopping) })
}

// Stop cancels the timers (the ledger keeps the commands; the next Start
// resumes them), stops handling events and ends the listeners, and waits
// for all of it.
func (s *Service) Stop(ctx context.Context) error {
	s.StopWaiting()
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return nil
	}
	s.stopped = true
	for id, t := range s.timers {
		t.Stop()
		delete(s.timers, id)
	}
	ls := make([]*listener, 0, len(s.listeners))
	for id, l := range s.listeners {
		ls = append(ls, l)
		delete(s.listeners, id)
	}
	s.mu.Unlock()
	for _, l := range ls {
		l.close()
	}
	s.events.close()
	s.cancel()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop command service: %w", ctx.Err())
	}
}

// SendRequest asks for a new command.
type SendRequest struct {
	Device string
	// Name is the last level of the command topic: 1 to 64 letters,
	// digits, '-', '_', '.' and ':'.
	Name string
	// Params is a JSON object (empty or null means {}).
	Params json.RawMessage
	// Timeout is how long the command may take from now until its final
	// reply; 0 means the default. It may not exceed the maximum.
	Timeout time.Duration
	// IdempotencyKey, when set, makes Send return the device's existing
	// command with this key instead of creating another.
	IdempotencyKey string
}

// Send stores a new command and delivers it if its device is connected and
// subscribed; otherwise it stays queued until the device subscribes or it
// expires. created is false when the idempotency key matched an existing
// command, which is returned as it is.
func (s *Service) Send(ctx context.Context, req SendRequest) (cmd registry.Command, created bool, err error) {
	if err := s.validate(&req); err != nil {
		return registry.Command{}, false, fmt.Errorf("send command: %w", err)
	}
	now := time.Now()
	cmd, created, err = s.ledger.InsertCommand(ctx, registry.Command{
		Device: req.Device, Name: req.Name, Params: req.Params, IdempotencyKey: req.IdempotencyKey,
		CreatedAt: now, ExpiresAt: now.Add(req.Timeout),
	})
	switch {
	case errors.Is(err, registry.ErrNotFound):
		s.m.rejected.WithLabelValues("unknown_device").Inc()
		return registry.Command{}, false, fmt.Errorf("send command: device %q: %w", req.Device, ErrNotFound)
	case errors.Is(err, registry.ErrInvalid):
		s.m.rejected.WithLabelValues("invalid").Inc()
		return registry.Command{}, false, fmt.Errorf("send command: %w", err)
	case err != nil:
		return registry.Command{}, false, fmt.Errorf("send command: %w", err)
	case !created:
		return cmd, false, nil
	}
	s.arm(cmd)
	s.announce(cmd, "", registry.CommandQueued)
	if err := s.deliver(ctx, cmd.Device); err != nil {
		// The command is stored and queued; the next subscribe retries.
		s.log.Warn("deliver commands", "device", cmd.Device, "error", err)
	}
	if c, err := s.ledger.Command(ctx, cmd.ID); err == nil {
		cmd = c // sent, most likely
	}
	return cmd, true, nil
}

func (s *Service) validate(req *SendRequest) error {
	if err := telemetry.ValidateDeviceID(req.Device); err != nil {
		s.m.rejected.WithLabelValues("invalid_device").Inc()
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := ValidateName(req.Name); err != nil {
		s.m.rejected.WithLabelValues("invalid_name").Inc()
		return err
	}
	params, err := normalizeParams(req.Params)
	if err != nil {
		s.m.rejected.WithLabelValues("invalid_params").Inc()
		return err
	}
	req.Params = params
	switch {
	case req.Timeout == 0:
		req.Timeout = s.defTimeout
	case req.Timeout < 0:
		s.m.rejected.WithLabelValues("invalid_timeout").Inc()
		return fmt.Errorf("%w: timeout %s is negative", ErrInvalid, req.Timeout)
	case req.Timeout > s.maxTimeout:
		s.m.rejected.WithLabelValues("invalid_timeout").Inc()
		return fmt.Errorf("%w: timeout %s is longer than the maximum %s (commands.max_timeout)", ErrInvalid, req.Timeout, s.maxTimeout)
	}
	if len(req.IdempotencyKey) > 128 {
		s.m.rejected.WithLabelValues("invalid_key").Inc()
		return fmt.Errorf("%w: idempotency key is longer than 128 bytes", ErrInvalid)
	}
	return nil
}

// ValidateName checks a command name. It becomes a topic level, so it may
// not hold '/', '+', '#' or NUL; fieldhub allows the device id charset
// (letters, digits, '-', '_', '.', ':'), at most 64 characters.
func ValidateName(name string) error {
	if name == "" || len(name) > maxNameLen {
		return fmt.Errorf("%w: command name must be 1 to %d characters", ErrInvalid, maxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.', c == ':':
		default:
			return fmt.Errorf("%w: command name has %q at position %d; allowed are letters, digits, '-', '_', '.' and ':'", ErrInvalid, c, i)
		}
	}
	return nil
}

func normalizeParams(p json.RawMessage) (json.RawMessage, error) {
	t := trimSpace(p)
	if len(t) == 0 || string(t) == "null" {
		return json.RawMessage("{}"), nil
	}
	if len(t) > MaxParamsBytes {
		return nil, fmt.Errorf("%w: params are %d bytes, more than %d", ErrInvalid, len(t), MaxParamsBytes)
	}
	if t[0] != '{' || !json.Valid(t) {
		return nil, fmt.Errorf("%w: params must be a JSON object", ErrInvalid)
	}
	return t, nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t' || b[0] == '\r' || b[0] == '\n') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t' || b[len(b)-1] == '\r' || b[len(b)-1] == '\n') {
		b = b[:len(b)-1]
	}
	return b
}

// Final reports whether a state is an end state.
func Final(s registry.CommandState) bool { return s.Valid() && !s.Pending() }

// Get returns a command.
func (s *Service) Get(ctx context.Context, id string) (registry.Command, error) {
	return s.ledger.Command(ctx, id)
}

// History returns a command's recorded transitions, oldest first.
func (s *Service) History(ctx context.Context, id string) ([]registry.Transition, error) {
	return s.ledger.CommandHistory(ctx, id)
}

// List returns a device's commands, newest first: at most limit (default
// 100, at most 1000), created before before when it is set (the CreatedAt
// of the last command of the previous page).
func (s *Service) List(ctx context.Context, device string, before time.Time, limit int) ([]registry.Command, error) {
	return s.ledger.Commands(ctx, registry.CommandFilter{Device: device, BeforeCreated: before, Limit: limit})
}

// Cancel cancels a pending command. A command already published may still
// reach the device; its reply is then ignored as late. A final command
// gives ErrFinal.
func (s *Service) Cancel(ctx context.Context, id string) (registry.Command, error) {
	c, err := s.finish(ctx, id, registry.CommandCancelled, nil, "", "cancelled by an operator")
	if err != nil {
		return c, fmt.Errorf("cancel command: %w", err)
	}
	return c, nil
}

// Wait returns the command once it is final, or its current state with
// ctx's error when ctx ends first (ErrStopped when the service stops).
func (s *Service) Wait(ctx context.Context, id string) (registry.Command, error) {
	ch := make(chan struct{})
	s.mu.Lock()
	s.waiters[id] = append(s.waiters[id], ch)
	s.mu.Unlock()
	defer s.removeWaiter(id, ch)
	// Registered first, read second: a transition between the two still
	// closes ch.
	c, err := s.ledger.Command(ctx, id)
	if err != nil || Final(c.State) {
		return c, err
	}
	select {
	case <-ch:
		return s.ledger.Command(ctx, id)
	case <-ctx.Done():
		return c, ctx.Err()
	case <-s.stopping:
		return c, ErrStopped
	}
}

func (s *Service) removeWaiter(id string, ch chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ws := s.waiters[id]
	for i, w := range ws {
		if w == ch {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(s.waiters, id)
	} else {
		s.waiters[id] = ws
	}
}

// finish moves a command to a final state from whichever pending state it
// is in: read the state, then compare-and-set from exactly that state, so
// the announced From is the stored one. A final command gives ErrFinal
// (and the command).
func (s *Service) finish(ctx context.Context, id string, to registry.CommandState, result json.RawMessage, errText, detail string) (registry.Command, error) {
	return s.transitionFrom(ctx, id, []registry.CommandState{registry.CommandQueued, registry.CommandSent, registry.CommandDelivered}, to, result, errText, detail)
}

func (s *Service) transitionFrom(ctx context.Context, id string, allowed []registry.CommandState, to registry.CommandState,
	result json.RawMessage, errText, detail string) (registry.Command, error) {
	for {
		cur, err := s.ledger.Command(ctx, id)
		if err != nil {
			return registry.Command{}, err
		}
		if !containsState(allowed, cur.State) {
			if Final(cur.State) {
				return cur, fmt.Errorf("command %s is %s: %w", id, cur.State, ErrFinal)
			}
			return cur, fmt.Errorf("command %s is %s: %w", id, cur.State, registry.ErrConflict)
		}
		c, err := s.ledger.TransitionCommand(ctx, id, []registry.CommandState{cur.State}, to, time.Time{}, result, errText, detail)
		if errors.Is(err, registry.ErrConflict) {
			continue // it moved between the read and the write; look again
		}
		if err != nil {
			return registry.Command{}, err
		}
		s.announce(c, cur.State, to)
		return c, nil
	}
}

func containsState(states []registry.CommandState, s registry.CommandState) bool {
	for _, x := range states {
		if x == s {
			return true
		}
	}
	return false
}

// announce tells waiters, listeners and the metrics about a stored
// transition, and drops the bookkeeping of a command that became final.
func (s *Service) announce(c registry.Command, from, to registry.CommandState) {
	s.mu.Lock()
	if Final(to) {
		if t, ok := s.timers[c.ID]; ok {
			t.Stop()
			delete(s.timers, c.ID)
		}
		delete(s.sentIn, c.ID)
		for _, ch := range s.waiters[c.ID] {
			close(ch)
		}
		delete(s.waiters, c.ID)
	}
	if to == registry.CommandDelivered {
		delete(s.sentIn, c.ID)
	}
	for _, l := range s.listeners {
		l.offer(Change{Command: c, From: from, To: to}, s.m)
	}
	s.mu.Unlock()
	if Final(to) {
		s.m.final.WithLabelValues(string(to)).Inc()
		if to == registry.CommandSucceeded || to == registry.CommandFailed {
			s.m.roundTrip.Observe(c.UpdatedAt.Sub(c.CreatedAt).Seconds())
		}
	}
}

// arm starts the expiry timer of a pending command.
func (s *Service) arm(c registry.Command) {
	if c.ExpiresAt.IsZero() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	if _, ok := s.timers[c.ID]; ok {
		return
	}
	id := c.ID
	s.timers[id] = time.AfterFunc(time.Until(c.ExpiresAt), func() { s.onExpiry(id) })
}

func (s *Service) onExpiry(id string) {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return
	}
	delete(s.timers, id)
	s.wg.Add(1) // under mu, before Stop's Wait can begin
	s.mu.Unlock()
	defer s.wg.Done()
	ctx, cancel := context.WithTimeout(s.ctx, opTimeout)
	defer cancel()
	if _, err := s.finish(ctx, id, registry.CommandExpired, nil, "", "timeout"); err != nil && !errors.Is(err, ErrFinal) && s.ctx.Err() == nil {
		s.log.Error("expire command", "id", id, "error", err)
	}
}

func (s *Service) pendingCount() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return float64(len(s.timers))
}
