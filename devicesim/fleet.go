package devicesim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/url"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// FleetConfig configures a Fleet.
type FleetConfig struct {
	Profile *Profile
	// Broker overrides the profile's broker URL (tcp://host:port).
	Broker string
	// Credentials map device ids to tokens; every device of the profile
	// needs one unless Anonymous is set.
	Credentials map[string]string
	// Anonymous connects without username and password (plain brokers).
	Anonymous bool
	// Faults, when set, replace the faults of every device type.
	Faults *Faults
	// Storm, when set, replaces the profile's disconnect storm.
	Storm *Storm

	ConnectTimeout time.Duration // default 10s
	RebootDelay    time.Duration // default 1s, for a reboot without params
	Drain          time.Duration // how long Stop waits for in-flight messages, default 5s

	Logger     *slog.Logger          // default: discard
	Registerer prometheus.Registerer // optional; fieldhub_devicesim_* counters
	Now        func() time.Time      // default time.Now
}

// Fleet runs the devices of a profile.
type Fleet struct {
	cfg     FleetConfig
	log     *slog.Logger
	devices []*Device
	byID    map[string]*Device
	storm   Storm

	mu      sync.Mutex
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	started bool
}

// NewFleet builds the devices of cfg.Profile without connecting them.
func NewFleet(cfg FleetConfig) (*Fleet, error) {
	p := cfg.Profile
	if p == nil {
		return nil, errors.New("fleet: no profile")
	}
	if cfg.Broker == "" {
		cfg.Broker = p.Broker
	}
	if err := checkBrokerURL(cfg.Broker); err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.RebootDelay <= 0 {
		cfg.RebootDelay = time.Second
	}
	if cfg.Drain <= 0 {
		cfg.Drain = 5 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Faults != nil {
		if err := cfg.Faults.Validate(); err != nil {
			return nil, fmt.Errorf("fleet: faults: %w", err)
		}
	}
	f := &Fleet{cfg: cfg, log: log, byID: map[string]*Device{}, storm: p.Storm}
	if cfg.Storm != nil {
		if err := cfg.Storm.Validate(); err != nil {
			return nil, fmt.Errorf("fleet: storm: %w", err)
		}
		f.storm = *cfg.Storm
	}
	for _, spec := range p.Devices() {
		token, ok := cfg.Credentials[spec.ID]
		if !ok && !cfg.Anonymous {
			return nil, fmt.Errorf("fleet: no credentials for device %s (provision it, or pass a credentials file that has it)", spec.ID)
		}
		faults := p.FaultsFor(spec.Type)
		if cfg.Faults != nil {
			faults = *cfg.Faults
		}
		t := spec.Type
		start := rand.New(rand.NewPCG(SignalSeed(p.Seed, spec.ID, "\x00start")))
		d, err := newDevice(deviceConfig{
			ID:             spec.ID,
			Token:          token,
			Anonymous:      cfg.Anonymous,
			Broker:         cfg.Broker,
			QoS:            byte(*t.QoS),
			Interval:       t.Interval,
			Metrics:        t.Metrics,
			Seed:           p.Seed,
			Buffer:         p.Buffer,
			Batch:          p.Batch,
			Faults:         faults,
			Backoff:        p.Backoff,
			StartDelay:     time.Duration(start.Float64() * float64(t.Interval)),
			ConnectTimeout: cfg.ConnectTimeout,
			RebootDelay:    cfg.RebootDelay,
			Drain:          cfg.Drain,
		}, log, cfg.Now)
		if err != nil {
			return nil, fmt.Errorf("fleet: device %s: %w", spec.ID, err)
		}
		f.devices = append(f.devices, d)
		f.byID[spec.ID] = d
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(newStatsCollector(f.Stats)); err != nil {
			return nil, fmt.Errorf("fleet: register metrics: %w", err)
		}
	}
	return f, nil
}

func checkBrokerURL(s string) error {
	if s == "" {
		return errors.New("no broker URL (set broker in the profile or pass --broker)")
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("broker URL %q: %w", s, err)
	}
	if (u.Scheme != "tcp" && u.Scheme != "mqtt") || u.Host == "" || u.Port() == "" {
		return fmt.Errorf("broker URL %q: want tcp://host:port", s)
	}
	return nil
}

// Start connects every device and starts its firmware loop; it returns at
// once. Stop ends them.
func (f *Fleet) Start(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.started {
		return errors.New("fleet already started")
	}
	f.started = true
	ctx, f.cancel = context.WithCancel(ctx)
	for _, d := range f.devices {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			d.run(ctx)
		}()
	}
	if f.storm.Every > 0 {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.storms(ctx)
		}()
	}
	f.log.Info("fleet started", "devices", len(f.devices), "broker", f.cfg.Broker)
	return nil
}

// Stop ends every device (each waits up to Drain for its in-flight
// messages, then disconnects) and waits for them.
func (f *Fleet) Stop() {
	f.mu.Lock()
	cancel := f.cancel
	f.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	f.wg.Wait()
}

// Quiesce stops every device from taking new readings; connections,
// buffers, commands and twins keep working. A run calls it before checking
// its expectations so the counts stop moving.
func (f *Fleet) Quiesce(ctx context.Context) {
	for _, d := range f.devices {
		select {
		case d.events <- event{kind: evQuiesce}:
		case <-d.done:
		case <-ctx.Done():
			return
		}
	}
}

// DropConnections closes the TCP connection of the given devices (all when
// ids is empty), as a disconnect storm does.
func (f *Fleet) DropConnections(ctx context.Context, ids ...string) {
	ds := f.devices
	if len(ids) > 0 {
		ds = nil
		for _, id := range ids {
			if d := f.byID[id]; d != nil {
				ds = append(ds, d)
			}
		}
	}
	for _, d := range ds {
		select {
		case d.events <- event{kind: evDrop}:
		case <-d.done:
		case <-ctx.Done():
			return
		}
	}
}

// storms drops the connections of Storm.Pct percent of the devices every
// Storm.Every, choosing them reproducibly from the profile seed.
func (f *Fleet) storms(ctx context.Context) {
	rng := rand.New(rand.NewPCG(f.cfg.Profile.Seed, 0x5702))
	t := time.NewTicker(f.storm.Every)
	defer t.Stop()
	n := len(f.devices)
	k := int(math.Round(f.storm.Pct / 100 * float64(n)))
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		perm := rng.Perm(n)[:k]
		ids := make([]string, 0, k)
		for _, i := range perm {
			ids = append(ids, f.devices[i].ID())
		}
		f.log.Info("disconnect storm", "devices", k)
		f.DropConnections(ctx, ids...)
	}
}

// Devices lists the fleet's devices in profile order.
func (f *Fleet) Devices() []*Device { return f.devices }

// Device returns a device by id, or nil.
func (f *Fleet) Device(id string) *Device { return f.byID[id] }

// Stats sums the counters of every device.
func (f *Fleet) Stats() Stats {
	var s Stats
	for _, d := range f.devices {
		s = s.Add(d.Stats())
	}
	return s
}
