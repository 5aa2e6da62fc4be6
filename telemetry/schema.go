package telemetry

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Metric types of a MetricSpec.
const (
	TypeNumber = "number"
	TypeBool   = "bool"
	TypeString = "string"
)

// What a device type does with metrics it does not declare.
const (
	UnknownAccept = "accept" // default: store them, whatever their type
	UnknownReject = "reject"
)

// MetricSpec declares one metric of a device type.
type MetricSpec struct {
	// Type is "number", "bool" or "string".
	Type string `mapstructure:"type" yaml:"type" json:"type"`
	// Unit is informational (shown in the dashboard); values are not converted.
	Unit string `mapstructure:"unit" yaml:"unit,omitempty" json:"unit,omitempty"`
	// Min and Max bound a number metric, both inclusive; nil is unbounded.
	Min *float64 `mapstructure:"min" yaml:"min,omitempty" json:"min,omitempty"`
	Max *float64 `mapstructure:"max" yaml:"max,omitempty" json:"max,omitempty"`
}

// DeviceType is the schema of a kind of device, loaded from configuration:
//
//	name: thermostat
//	unknown_metrics: reject
//	metrics:
//	  temperature: {type: number, unit: Cel, min: -40, max: 125}
//	  door_open:   {type: bool}
//	  mode:        {type: string}
type DeviceType struct {
	Name    string                `mapstructure:"name" yaml:"name" json:"name"`
	Metrics map[string]MetricSpec `mapstructure:"metrics" yaml:"metrics,omitempty" json:"metrics,omitempty"`
	// UnknownMetrics is "accept" (the default when empty) or "reject".
	UnknownMetrics string `mapstructure:"unknown_metrics" yaml:"unknown_metrics,omitempty" json:"unknown_metrics,omitempty"`
}

// DefaultType is the permissive type of devices without one: any metric of
// any type is accepted.
func DefaultType() *DeviceType {
	return &DeviceType{Name: "default", UnknownMetrics: UnknownAccept}
}

// MaxTypeNameLen bounds a device type name.
const MaxTypeNameLen = 64

// Check validates a device type at configuration time. Its error names the
// offending field, e.g. `device type "thermostat": metrics.temperature.min:
// 130 is above max 125`.
func (dt *DeviceType) Check() error {
	if dt == nil {
		return errors.New("device type is nil")
	}
	fail := func(field, format string, args ...any) error {
		return fmt.Errorf("device type %q: %s: %s", dt.Name, field, fmt.Sprintf(format, args...))
	}
	if msg := checkTypeName(dt.Name); msg != "" {
		return fmt.Errorf("device type %q: name: %s", dt.Name, msg)
	}
	switch dt.UnknownMetrics {
	case "", UnknownAccept, UnknownReject:
	default:
		return fail("unknown_metrics", "%q is not one of accept, reject", dt.UnknownMetrics)
	}
	names := make([]string, 0, len(dt.Metrics))
	for name := range dt.Metrics {
		names = append(names, name)
	}
	slices.Sort(names) // report the same error every time
	for _, name := range names {
		spec := dt.Metrics[name]
		field := fieldPath("metrics", name)
		if msg := checkName(name); msg != "" {
			return fail(field, "metric name %s", msg)
		}
		switch spec.Type {
		case TypeNumber:
		case TypeBool, TypeString:
			if spec.Min != nil || spec.Max != nil {
				return fail(field, "min and max apply to numbers only, and the type is %s", spec.Type)
			}
		case "":
			return fail(field+".type", "is required (number, bool or string)")
		default:
			return fail(field+".type", "%q is not one of number, bool, string", spec.Type)
		}
		if spec.Min != nil && !isFinite(*spec.Min) {
			return fail(field+".min", "must be a finite number")
		}
		if spec.Max != nil && !isFinite(*spec.Max) {
			return fail(field+".max", "must be a finite number")
		}
		if spec.Min != nil && spec.Max != nil && *spec.Min > *spec.Max {
			return fail(field+".min", "%s is above max %s", fmtNum(*spec.Min), fmtNum(*spec.Max))
		}
	}
	return nil
}

func checkTypeName(name string) string {
	if name == "" {
		return "is empty"
	}
	if len(name) > MaxTypeNameLen {
		return fmt.Sprintf("is %d characters, more than %d", len(name), MaxTypeNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-', c == '.':
		default:
			return fmt.Sprintf("has %q at position %d; allowed are letters, digits, '_', '-' and '.'", c, i)
		}
	}
	return ""
}

// ValidationError says which metric of a reading broke its device type and why.
type ValidationError struct {
	Metric string
	Reason string // e.g. "150 above maximum 125"
	Code   string // CodeWrongType, CodeOutOfRange or CodeUnknownMetric
}

func (e *ValidationError) Error() string { return e.Metric + ": " + e.Reason }

// Validate checks a decoded reading against the device type and returns
// the first failing metric as a *ValidationError. A nil *DeviceType accepts
// everything, like DefaultType.
func (dt *DeviceType) Validate(r *Reading) error {
	if dt == nil || (len(dt.Metrics) == 0 && dt.UnknownMetrics != UnknownReject) {
		return nil
	}
	for _, m := range r.Metrics {
		spec, ok := dt.Metrics[m.Name]
		if !ok {
			if dt.UnknownMetrics == UnknownReject {
				return &ValidationError{Metric: m.Name, Code: CodeUnknownMetric, Reason: fmt.Sprintf("not a metric of device type %s (known: %s)", dt.Name, dt.knownMetrics())}
			}
			continue
		}
		if got := m.Value.Kind.String(); got != spec.Type {
			return &ValidationError{Metric: m.Name, Code: CodeWrongType, Reason: fmt.Sprintf("must be a %s, got %s", spec.Type, got)}
		}
		if m.Value.Kind != KindNumber {
			continue
		}
		if spec.Max != nil && m.Value.Num > *spec.Max {
			return &ValidationError{Metric: m.Name, Code: CodeOutOfRange, Reason: fmt.Sprintf("%s above maximum %s", fmtNum(m.Value.Num), fmtNum(*spec.Max))}
		}
		if spec.Min != nil && m.Value.Num < *spec.Min {
			return &ValidationError{Metric: m.Name, Code: CodeOutOfRange, Reason: fmt.Sprintf("%s below minimum %s", fmtNum(m.Value.Num), fmtNum(*spec.Min))}
		}
	}
	return nil
}

// knownMetrics lists the declared metric names for an error message.
func (dt *DeviceType) knownMetrics() string {
	names := make([]string, 0, len(dt.Metrics))
	for n := range dt.Metrics {
		names = append(names, n)
	}
	slices.Sort(names)
	if len(names) > 10 {
		names = append(names[:10], "…")
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

func isFinite(f float64) bool { return !math.IsInf(f, 0) && !math.IsNaN(f) }

func fmtNum(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }
