package devicesim

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

// Signal models, as named in a profile's `model:` key.
const (
	ModelConstant   = "constant"
	ModelSine       = "sine"
	ModelRandomWalk = "random_walk"
	ModelStep       = "step"
	ModelToggle     = "toggle"
	ModelEnum       = "enum"
)

// MetricSpec describes one metric of a device type and the signal that
// produces its values. Which fields apply depends on Model; Validate says
// which are missing.
type MetricSpec struct {
	Name  string `yaml:"-"`
	Model string `yaml:"model"`

	// constant: Value is a number, a bool or a string.
	Value any `yaml:"value"`

	// sine: Offset + Amplitude*sin(2π t/Period) + Noise*N(0,1).
	Period    time.Duration `yaml:"period"`
	Amplitude float64       `yaml:"amplitude"`
	Offset    float64       `yaml:"offset"`
	Noise     float64       `yaml:"noise"`

	// random_walk: starts at Start (default the middle of [Min, Max]) and
	// moves by at most Step per reading, clamped to [Min, Max].
	Start *float64 `yaml:"start"`
	Step  float64  `yaml:"step"`
	Min   float64  `yaml:"min"`
	Max   float64  `yaml:"max"`

	// step: the value of the last step whose At is <= the signal time; with
	// Cycle > 0 the schedule repeats every Cycle.
	Steps []StepPoint   `yaml:"steps"`
	Cycle time.Duration `yaml:"cycle"`

	// toggle: starts at Initial (a bool) and flips with Probability per
	// reading. enum: starts at Values[0] (or Initial) and changes to a
	// random value of Values with Probability per reading.
	Probability float64  `yaml:"probability"`
	Initial     any      `yaml:"initial"`
	Values      []string `yaml:"values"`

	// Decimals rounds numeric values (sine, random_walk) to that many
	// decimals; nil keeps full precision.
	Decimals *int `yaml:"decimals"`
}

// numeric reports whether the metric's values are numbers.
func (m *MetricSpec) numeric() bool {
	switch m.Model {
	case ModelSine, ModelRandomWalk, ModelStep:
		return true
	case ModelConstant:
		v, err := constValue(m.Value)
		return err == nil && v.Kind == telemetry.KindNumber
	}
	return false
}

// StepPoint is one entry of a step schedule.
type StepPoint struct {
	At    time.Duration `yaml:"at"`
	Value float64       `yaml:"value"`
}

// Validate checks that the fields the model needs are present and sane.
func (m *MetricSpec) Validate() error {
	if m.Name == "" {
		return errors.New("metric name is empty")
	}
	switch m.Model {
	case ModelConstant:
		if _, err := constValue(m.Value); err != nil {
			return fmt.Errorf("metric %s: value: %w", m.Name, err)
		}
	case ModelSine:
		if m.Period <= 0 {
			return fmt.Errorf("metric %s: sine needs period > 0", m.Name)
		}
		if m.Noise < 0 {
			return fmt.Errorf("metric %s: noise must be >= 0", m.Name)
		}
	case ModelRandomWalk:
		if !(m.Min < m.Max) {
			return fmt.Errorf("metric %s: random_walk needs min < max (got %g, %g)", m.Name, m.Min, m.Max)
		}
		if m.Step <= 0 {
			return fmt.Errorf("metric %s: random_walk needs step > 0", m.Name)
		}
		if m.Start != nil && (*m.Start < m.Min || *m.Start > m.Max) {
			return fmt.Errorf("metric %s: start %g outside [%g, %g]", m.Name, *m.Start, m.Min, m.Max)
		}
	case ModelStep:
		if len(m.Steps) == 0 {
			return fmt.Errorf("metric %s: step needs at least one entry in steps", m.Name)
		}
		for i := 1; i < len(m.Steps); i++ {
			if m.Steps[i].At <= m.Steps[i-1].At {
				return fmt.Errorf("metric %s: steps[%d].at must be after steps[%d].at", m.Name, i, i-1)
			}
		}
		if m.Steps[0].At < 0 || m.Cycle < 0 {
			return fmt.Errorf("metric %s: step times must be >= 0", m.Name)
		}
		if m.Cycle > 0 && m.Steps[len(m.Steps)-1].At >= m.Cycle {
			return fmt.Errorf("metric %s: last step at %s is not inside cycle %s", m.Name, m.Steps[len(m.Steps)-1].At, m.Cycle)
		}
	case ModelToggle:
		if err := checkProbability(m.Probability); err != nil {
			return fmt.Errorf("metric %s: %w", m.Name, err)
		}
		if m.Initial != nil {
			if _, ok := m.Initial.(bool); !ok {
				return fmt.Errorf("metric %s: toggle initial must be true or false, got %v", m.Name, m.Initial)
			}
		}
	case ModelEnum:
		if len(m.Values) == 0 {
			return fmt.Errorf("metric %s: enum needs values", m.Name)
		}
		if err := checkProbability(m.Probability); err != nil {
			return fmt.Errorf("metric %s: %w", m.Name, err)
		}
		if m.Initial != nil {
			s, ok := m.Initial.(string)
			if !ok || !slices.Contains(m.Values, s) {
				return fmt.Errorf("metric %s: enum initial %v is not one of values", m.Name, m.Initial)
			}
		}
	case "":
		return fmt.Errorf("metric %s: model is missing (want %s)", m.Name, modelList)
	default:
		return fmt.Errorf("metric %s: unknown model %q (want %s)", m.Name, m.Model, modelList)
	}
	if m.Decimals != nil && (*m.Decimals < 0 || *m.Decimals > 15) {
		return fmt.Errorf("metric %s: decimals must be in [0, 15]", m.Name)
	}
	return nil
}

const modelList = "constant, sine, random_walk, step, toggle or enum"

func checkProbability(p float64) error {
	if p < 0 || p > 1 || math.IsNaN(p) {
		return fmt.Errorf("probability %g outside [0, 1]", p)
	}
	return nil
}

func constValue(v any) (telemetry.Value, error) {
	switch x := v.(type) {
	case int:
		return telemetry.Value{Kind: telemetry.KindNumber, Num: float64(x)}, nil
	case int64:
		return telemetry.Value{Kind: telemetry.KindNumber, Num: float64(x)}, nil
	case uint64:
		return telemetry.Value{Kind: telemetry.KindNumber, Num: float64(x)}, nil
	case float64:
		return telemetry.Value{Kind: telemetry.KindNumber, Num: x}, nil
	case bool:
		return telemetry.Value{Kind: telemetry.KindBool, Bool: x}, nil
	case string:
		return telemetry.Value{Kind: telemetry.KindString, Str: x}, nil
	case nil:
		return telemetry.Value{}, errors.New("missing")
	}
	return telemetry.Value{}, fmt.Errorf("%v is not a number, bool or string", v)
}

// Signal produces the successive values of one metric of one device.
// It is not safe for concurrent use: each device owns its signals.
type Signal interface {
	// Next returns the value at signal time t (the sum of the intervals
	// of the readings before this one, so it does not depend on the wall
	// clock) and advances the signal's state.
	Next(t time.Duration) telemetry.Value
	// Set moves the signal's setpoint (the `set` command): the constant,
	// the sine's offset, the walk's position, the toggle's or enum's
	// state; for a step schedule it overrides the schedule with v.
	Set(v telemetry.Value) error
}

// SignalSeed derives the PCG seed of one (device, metric) pair from the
// profile seed, so every signal has its own reproducible stream and adding
// a device or metric does not change the others.
func SignalSeed(seed uint64, device, metric string) (uint64, uint64) {
	h := fnv.New64a()
	h.Write([]byte(device))
	h.Write([]byte{0})
	h.Write([]byte(metric))
	return seed, h.Sum64()
}

// NewSignal builds the signal of m for one device. The spec must have
// passed Validate.
func NewSignal(m MetricSpec, seed uint64, device string) (Signal, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(SignalSeed(seed, device, m.Name)))
	round := func(f float64) float64 { return f }
	if m.Decimals != nil {
		p := math.Pow(10, float64(*m.Decimals))
		round = func(f float64) float64 { return math.Round(f*p) / p }
	}
	switch m.Model {
	case ModelConstant:
		v, _ := constValue(m.Value)
		return &constantSignal{v: v}, nil
	case ModelSine:
		return &sineSignal{spec: m, offset: m.Offset, rng: rng, round: round}, nil
	case ModelRandomWalk:
		x := (m.Min + m.Max) / 2
		if m.Start != nil {
			x = *m.Start
		}
		return &walkSignal{spec: m, x: x, rng: rng, round: round}, nil
	case ModelStep:
		return &stepSignal{spec: m}, nil
	case ModelToggle:
		b, _ := m.Initial.(bool)
		return &toggleSignal{p: m.Probability, state: b, rng: rng}, nil
	case ModelEnum:
		i := 0
		if s, ok := m.Initial.(string); ok {
			i = slices.Index(m.Values, s)
		}
		return &enumSignal{values: m.Values, p: m.Probability, i: i, rng: rng}, nil
	}
	return nil, fmt.Errorf("unknown model %q", m.Model)
}

func num(f float64) telemetry.Value { return telemetry.Value{Kind: telemetry.KindNumber, Num: f} }

func wantNumber(v telemetry.Value) (float64, error) {
	if v.Kind != telemetry.KindNumber {
		return 0, fmt.Errorf("want a number, got a %s", v.Kind)
	}
	if math.IsNaN(v.Num) || math.IsInf(v.Num, 0) {
		return 0, errors.New("want a finite number")
	}
	return v.Num, nil
}

type constantSignal struct{ v telemetry.Value }

func (s *constantSignal) Next(time.Duration) telemetry.Value { return s.v }

func (s *constantSignal) Set(v telemetry.Value) error {
	if v.Kind != s.v.Kind {
		return fmt.Errorf("want a %s, got a %s", s.v.Kind, v.Kind)
	}
	s.v = v
	return nil
}

type sineSignal struct {
	spec   MetricSpec
	offset float64
	rng    *rand.Rand
	round  func(float64) float64
}

func (s *sineSignal) Next(t time.Duration) telemetry.Value {
	phase := 2 * math.Pi * float64(t%s.spec.Period) / float64(s.spec.Period)
	v := s.offset + s.spec.Amplitude*math.Sin(phase)
	if s.spec.Noise > 0 {
		v += s.spec.Noise * s.rng.NormFloat64()
	}
	return num(s.round(v))
}

func (s *sineSignal) Set(v telemetry.Value) error {
	f, err := wantNumber(v)
	if err != nil {
		return err
	}
	s.offset = f
	return nil
}

type walkSignal struct {
	spec  MetricSpec
	x     float64
	rng   *rand.Rand
	round func(float64) float64
}

// Next returns the current position, then takes a step, so the first
// reading is Start.
func (s *walkSignal) Next(time.Duration) telemetry.Value {
	v := s.round(s.x)
	s.x += s.spec.Step * (2*s.rng.Float64() - 1)
	s.x = min(max(s.x, s.spec.Min), s.spec.Max)
	return num(v)
}

func (s *walkSignal) Set(v telemetry.Value) error {
	f, err := wantNumber(v)
	if err != nil {
		return err
	}
	if f < s.spec.Min || f > s.spec.Max {
		return fmt.Errorf("%g outside [%g, %g]", f, s.spec.Min, s.spec.Max)
	}
	s.x = f
	return nil
}

type stepSignal struct {
	spec     MetricSpec
	override *float64
}

func (s *stepSignal) Next(t time.Duration) telemetry.Value {
	if s.override != nil {
		return num(*s.override)
	}
	if s.spec.Cycle > 0 {
		t %= s.spec.Cycle
	}
	v := s.spec.Steps[0].Value
	for _, st := range s.spec.Steps {
		if st.At > t {
			break
		}
		v = st.Value
	}
	return num(v)
}

func (s *stepSignal) Set(v telemetry.Value) error {
	f, err := wantNumber(v)
	if err != nil {
		return err
	}
	s.override = &f
	return nil
}

type toggleSignal struct {
	p     float64
	state bool
	rng   *rand.Rand
}

func (s *toggleSignal) Next(time.Duration) telemetry.Value {
	v := telemetry.Value{Kind: telemetry.KindBool, Bool: s.state}
	if s.rng.Float64() < s.p {
		s.state = !s.state
	}
	return v
}

func (s *toggleSignal) Set(v telemetry.Value) error {
	if v.Kind != telemetry.KindBool {
		return fmt.Errorf("want a bool, got a %s", v.Kind)
	}
	s.state = v.Bool
	return nil
}

type enumSignal struct {
	values []string
	p      float64
	i      int
	rng    *rand.Rand
}

func (s *enumSignal) Next(time.Duration) telemetry.Value {
	v := telemetry.Value{Kind: telemetry.KindString, Str: s.values[s.i]}
	if s.rng.Float64() < s.p {
		s.i = s.rng.IntN(len(s.values))
	}
	return v
}

func (s *enumSignal) Set(v telemetry.Value) error {
	if v.Kind != telemetry.KindString {
		return fmt.Errorf("want a string, got a %s", v.Kind)
	}
	i := slices.Index(s.values, v.Str)
	if i < 0 {
		return fmt.Errorf("%q is not one of %v", v.Str, s.values)
	}
	s.i = i
	return nil
}
