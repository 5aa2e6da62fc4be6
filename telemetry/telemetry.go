// Package telemetry holds fieldhub's domain types for device data, the
// payload codecs and the validation schema. It is pure: no I/O, no imports of
// other fieldhub packages.
package telemetry

// Kind is the type of a metric value.
type Kind uint8

const (
	KindNumber Kind = iota + 1
	KindBool
	KindString
)

func (k Kind) String() string {
	switch k {
	case KindNumber:
		return "number"
	case KindBool:
		return "bool"
	case KindString:
		return "string"
	}
	return "unknown"
}

// Value is one metric value as a device sent it.
type Value struct {
	Kind Kind
	Num  float64
	Bool bool
	Str  string
}

// Float is the value as the time-series store keeps it: booleans as 0/1.
// Strings have no float form; ok is false for them.
func (v Value) Float() (f float64, ok bool) {
	switch v.Kind {
	case KindNumber:
		return v.Num, true
	case KindBool:
		if v.Bool {
			return 1, true
		}
		return 0, true
	}
	return 0, false
}

// Metric is a named value inside a reading.
type Metric struct {
	Name  string
	Value Value
}

// Reading is one message's worth of metrics taken at one instant.
type Reading struct {
	// TS is the reading's time in unix milliseconds; the hub's clock when the
	// device sent none.
	TS int64
	// Seq is the device's sequence number, if it sent one (HasSeq).
	Seq     uint64
	HasSeq  bool
	Metrics []Metric
}

// Sample is one numeric point as stored: identified by (Device, Metric, TS),
// so writing the same sample twice stores it once.
type Sample struct {
	Device string
	Metric string
	TS     int64 // unix milliseconds
	Value  float64
}

// Event is a string-valued metric, which the time-series store cannot hold;
// it is kept in the registry instead.
type Event struct {
	Device string
	Metric string
	TS     int64 // unix milliseconds
	Value  string
}
