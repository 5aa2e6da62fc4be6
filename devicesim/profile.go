package devicesim

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/fieldhub/fieldhub/telemetry"
)

// Profile describes a simulated fleet: which device types, how many of
// each, what they measure and which faults they inject. It is loaded from
// YAML (see configs/devicesim/) and validated as a whole.
type Profile struct {
	// Seed makes every signal and every fault decision reproducible.
	Seed uint64 `yaml:"seed"`
	// Broker is the MQTT server URL (tcp://host:port); a flag may override it.
	Broker string `yaml:"broker"`
	// IDPrefix starts every device id; a type's ids are
	// IDPrefix + type name + "-" + a zero-padded number unless the type sets
	// its own id_prefix.
	IDPrefix string `yaml:"id_prefix"`
	// Interval and QoS are the defaults for types that set none.
	Interval time.Duration `yaml:"interval"`
	QoS      *int          `yaml:"qos"`
	// Buffer bounds the readings a device keeps while disconnected; the
	// oldest are dropped (and counted) when it is full.
	Buffer int `yaml:"buffer"`
	// Batch is the most readings a flush after a reconnect puts in one
	// message (a JSON array).
	Batch int `yaml:"batch"`
	// Backoff of the reconnect loop.
	Backoff Backoff `yaml:"backoff"`
	// Faults apply to every type without faults of its own.
	Faults Faults `yaml:"faults"`
	// Storm drops the connections of a share of the fleet at once.
	Storm Storm `yaml:"storm"`
	// Types of devices in the fleet (YAML key "devices").
	Types []DeviceType `yaml:"-"`
	// Expect lists assertions for `devicesim run`, in the syntax of
	// --expect: "stored=all", "rejected>=3", "replies=0".
	Expect []string `yaml:"expect"`
}

// DeviceType is a group of identical devices.
type DeviceType struct {
	Name     string            `yaml:"type"`
	Count    int               `yaml:"count"`
	IDPrefix string            `yaml:"id_prefix"`
	Interval time.Duration     `yaml:"interval"`
	QoS      *int              `yaml:"qos"`
	Labels   map[string]string `yaml:"labels"`
	Faults   *Faults           `yaml:"faults"`
	// Metrics in name order (YAML gives them as a map).
	Metrics []MetricSpec `yaml:"-"`
}

// Faults are injected per message; every injection is counted (Stats).
type Faults struct {
	// MalformedPct of telemetry messages are sent as truncated JSON.
	MalformedPct float64 `yaml:"malformed_pct"`
	// OutOfRangePct of readings carry OutOfRangeValue (default -1e9) in
	// their first numeric metric.
	OutOfRangePct   float64  `yaml:"out_of_range_pct"`
	OutOfRangeValue *float64 `yaml:"out_of_range_value"`
	// ClockSkew is added to the timestamps of ClockSkewPct (default 100)
	// percent of readings.
	ClockSkew    time.Duration `yaml:"clock_skew"`
	ClockSkewPct *float64      `yaml:"clock_skew_pct"`
	// DuplicatePct of readings are delivered twice (same seq and ts).
	DuplicatePct float64 `yaml:"duplicate_pct"`
	// SlowConsumer delays the handling (and so the PUBACK) of every
	// message the device receives.
	SlowConsumer time.Duration `yaml:"slow_consumer"`
}

// Storm is a disconnect storm: every Every, Pct percent of the fleet's
// devices lose their TCP connection at once and reconnect with backoff.
type Storm struct {
	Every time.Duration `yaml:"every"`
	Pct   float64       `yaml:"pct"`
}

// Backoff is the reconnect policy: exponential from Min to Max, each wait
// randomised by ±Jitter (a fraction) so a fleet does not reconnect in step.
type Backoff struct {
	Min    time.Duration `yaml:"min"`
	Max    time.Duration `yaml:"max"`
	Jitter float64       `yaml:"jitter"`
}

// Defaults for fields a profile leaves out.
const (
	DefaultInterval        = 10 * time.Second
	DefaultBuffer          = 1000
	DefaultBatch           = 100
	DefaultOutOfRangeValue = -1e9
)

// DefaultBackoff is used when a profile sets none.
var DefaultBackoff = Backoff{Min: 500 * time.Millisecond, Max: 30 * time.Second, Jitter: 0.2}

// yamlProfile and yamlType mirror Profile for decoding: metrics arrive as a
// map and are turned into a sorted slice.
type yamlType struct {
	DeviceType `yaml:",inline"`
	Metrics    map[string]MetricSpec `yaml:"metrics"`
}

type yamlProfile struct {
	Profile `yaml:",inline"`
	Types   []yamlType `yaml:"devices"`
}

// LoadProfile reads and validates a profile file.
func LoadProfile(path string) (*Profile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read profile: %w", err)
	}
	p, err := ParseProfile(b)
	if err != nil {
		return nil, fmt.Errorf("profile %s: %w", path, err)
	}
	return p, nil
}

var yamlUnknownField = regexp.MustCompile(`line (\d+): field (\S+) not found in type \S+`)

// ParseProfile decodes a YAML profile, refusing unknown keys, applies
// defaults and validates it.
func ParseProfile(b []byte) (*Profile, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var y yamlProfile
	if err := dec.Decode(&y); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("profile is empty")
		}
		// yaml says "field x not found in type devicesim.yamlType";
		// name the key the way the user wrote it.
		msg := yamlUnknownField.ReplaceAllString(err.Error(), "line $1: unknown key \"$2\"")
		return nil, errors.New(msg)
	}
	p := y.Profile
	p.Types = nil
	for _, yt := range y.Types {
		t := yt.DeviceType
		for name, m := range yt.Metrics {
			m.Name = name
			t.Metrics = append(t.Metrics, m)
		}
		slices.SortFunc(t.Metrics, func(a, b MetricSpec) int { return strings.Compare(a.Name, b.Name) })
		p.Types = append(p.Types, t)
	}
	p.applyDefaults()
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

func (p *Profile) applyDefaults() {
	if p.Interval == 0 {
		p.Interval = DefaultInterval
	}
	if p.QoS == nil {
		q := 1
		p.QoS = &q
	}
	if p.Buffer == 0 {
		p.Buffer = DefaultBuffer
	}
	if p.Batch == 0 {
		p.Batch = DefaultBatch
	}
	if p.Backoff == (Backoff{}) {
		p.Backoff = DefaultBackoff
	}
	for i := range p.Types {
		t := &p.Types[i]
		if t.Interval == 0 {
			t.Interval = p.Interval
		}
		if t.QoS == nil {
			t.QoS = p.QoS
		}
		if t.IDPrefix == "" {
			t.IDPrefix = p.IDPrefix + t.Name + "-"
		}
	}
}

// Validate checks the whole profile and names the first bad field.
func (p *Profile) Validate() error {
	if len(p.Types) == 0 {
		return errors.New("devices: at least one device type is needed")
	}
	if p.QoS != nil && (*p.QoS < 0 || *p.QoS > 1) {
		return fmt.Errorf("qos: %d not supported (0 or 1)", *p.QoS)
	}
	if p.Buffer < 0 {
		return fmt.Errorf("buffer: %d must be >= 0", p.Buffer)
	}
	if p.Batch < 1 {
		return fmt.Errorf("batch: %d must be >= 1", p.Batch)
	}
	if err := p.Backoff.Validate(); err != nil {
		return fmt.Errorf("backoff: %w", err)
	}
	if err := p.Faults.Validate(); err != nil {
		return fmt.Errorf("faults: %w", err)
	}
	if err := p.Storm.Validate(); err != nil {
		return fmt.Errorf("storm: %w", err)
	}
	if _, err := ParseExpectations(p.Expect); err != nil {
		return fmt.Errorf("expect: %w", err)
	}
	seen := map[string]bool{}
	for i, t := range p.Types {
		where := fmt.Sprintf("devices[%d] (%s)", i, t.Name)
		if t.Name == "" {
			return fmt.Errorf("devices[%d]: type is missing", i)
		}
		if t.Count < 1 {
			return fmt.Errorf("%s: count must be >= 1", where)
		}
		if t.Interval < time.Millisecond {
			return fmt.Errorf("%s: interval %s is below 1ms", where, t.Interval)
		}
		if t.QoS != nil && (*t.QoS < 0 || *t.QoS > 1) {
			return fmt.Errorf("%s: qos %d not supported (0 or 1)", where, *t.QoS)
		}
		if len(t.Metrics) == 0 {
			return fmt.Errorf("%s: metrics: at least one metric is needed", where)
		}
		for j := range t.Metrics {
			if err := t.Metrics[j].Validate(); err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
		}
		if t.Faults != nil {
			if err := t.Faults.Validate(); err != nil {
				return fmt.Errorf("%s: faults: %w", where, err)
			}
		}
		// Ids must be valid and unique across types.
		for _, id := range []string{t.DeviceID(1), t.DeviceID(t.Count)} {
			if err := telemetry.ValidateDeviceID(id); err != nil {
				return fmt.Errorf("%s: id_prefix gives bad id %q: %w", where, id, err)
			}
		}
		if seen[t.IDPrefix] {
			return fmt.Errorf("%s: id_prefix %q is used by another type", where, t.IDPrefix)
		}
		seen[t.IDPrefix] = true
	}
	return nil
}

// Validate checks percentages and durations.
func (f *Faults) Validate() error {
	for _, c := range []struct {
		name string
		v    float64
	}{
		{"malformed_pct", f.MalformedPct},
		{"out_of_range_pct", f.OutOfRangePct},
		{"duplicate_pct", f.DuplicatePct},
	} {
		if err := checkPct(c.v); err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
	}
	if f.ClockSkewPct != nil {
		if err := checkPct(*f.ClockSkewPct); err != nil {
			return fmt.Errorf("clock_skew_pct: %w", err)
		}
	}
	if f.SlowConsumer < 0 {
		return errors.New("slow_consumer: must be >= 0")
	}
	if f.OutOfRangeValue != nil && (math.IsNaN(*f.OutOfRangeValue) || math.IsInf(*f.OutOfRangeValue, 0)) {
		return errors.New("out_of_range_value: must be a finite number (JSON has no NaN)")
	}
	return nil
}

// Validate checks the storm settings.
func (s *Storm) Validate() error {
	if s.Every < 0 {
		return errors.New("every: must be >= 0")
	}
	if err := checkPct(s.Pct); err != nil {
		return fmt.Errorf("pct: %w", err)
	}
	if s.Every > 0 && s.Pct == 0 {
		return errors.New("pct: set a share of devices (> 0) for the storm")
	}
	return nil
}

// Validate checks the backoff policy.
func (b *Backoff) Validate() error {
	if b.Min <= 0 || b.Max < b.Min {
		return fmt.Errorf("need 0 < min <= max (got %s, %s)", b.Min, b.Max)
	}
	if b.Jitter < 0 || b.Jitter >= 1 {
		return fmt.Errorf("jitter %g outside [0, 1)", b.Jitter)
	}
	return nil
}

func checkPct(v float64) error {
	if v < 0 || v > 100 || math.IsNaN(v) {
		return fmt.Errorf("%g outside [0, 100]", v)
	}
	return nil
}

// DeviceID is the id of the n-th device (1-based) of the type.
func (t *DeviceType) DeviceID(n int) string {
	width := max(3, len(fmt.Sprint(t.Count)))
	return fmt.Sprintf("%s%0*d", t.IDPrefix, width, n)
}

// DeviceSpec is one concrete device of a fleet.
type DeviceSpec struct {
	ID   string
	Type *DeviceType
}

// Devices lists every device of the profile, type by type.
func (p *Profile) Devices() []DeviceSpec {
	var out []DeviceSpec
	for i := range p.Types {
		t := &p.Types[i]
		for n := 1; n <= t.Count; n++ {
			out = append(out, DeviceSpec{ID: t.DeviceID(n), Type: t})
		}
	}
	return out
}

// FaultsFor returns the faults that apply to a type.
func (p *Profile) FaultsFor(t *DeviceType) Faults {
	if t.Faults != nil {
		return *t.Faults
	}
	return p.Faults
}
