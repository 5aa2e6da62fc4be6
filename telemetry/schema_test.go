package telemetry

import (
	"errors"
	"math"
	"strings"
	"testing"
)

func f64(f float64) *float64 { return &f }

func thermostat() *DeviceType {
	return &DeviceType{
		Name:           "thermostat",
		UnknownMetrics: UnknownReject,
		Metrics: map[string]MetricSpec{
			"temperature": {Type: TypeNumber, Unit: "Cel", Min: f64(-40), Max: f64(125)},
			"humidity":    {Type: TypeNumber, Min: f64(0)},
			"setpoint":    {Type: TypeNumber, Max: f64(30)},
			"door_open":   {Type: TypeBool},
			"mode":        {Type: TypeString},
		},
	}
}

func TestDeviceTypeCheck(t *testing.T) {
	if err := thermostat().Check(); err != nil {
		t.Fatalf("valid type: %v", err)
	}
	if err := DefaultType().Check(); err != nil {
		t.Fatalf("default type: %v", err)
	}
	tests := []struct {
		name   string
		modify func(*DeviceType)
		want   string
	}{
		{"empty name", func(dt *DeviceType) { dt.Name = "" }, `device type "": name: is empty`},
		{"bad name", func(dt *DeviceType) { dt.Name = "a b" }, `device type "a b": name: has ' ' at position 1; allowed are letters, digits, '_', '-' and '.'`},
		{"long name", func(dt *DeviceType) { dt.Name = strings.Repeat("n", 65) }, `device type "` + strings.Repeat("n", 65) + `": name: is 65 characters, more than 64`},
		{"unknown_metrics", func(dt *DeviceType) { dt.UnknownMetrics = "drop" }, `device type "thermostat": unknown_metrics: "drop" is not one of accept, reject`},
		{"bad metric name", func(dt *DeviceType) { dt.Metrics["bad name"] = MetricSpec{Type: TypeNumber} },
			`device type "thermostat": metrics."bad name": metric name has ' ' at position 3; allowed are letters, digits, '_', '.', '-' and ':'`},
		{"missing type", func(dt *DeviceType) { dt.Metrics["x"] = MetricSpec{} }, `device type "thermostat": metrics.x.type: is required (number, bool or string)`},
		{"bad type", func(dt *DeviceType) { dt.Metrics["x"] = MetricSpec{Type: "float"} }, `device type "thermostat": metrics.x.type: "float" is not one of number, bool, string`},
		{"min on bool", func(dt *DeviceType) { dt.Metrics["x"] = MetricSpec{Type: TypeBool, Min: f64(0)} },
			`device type "thermostat": metrics.x: min and max apply to numbers only, and the type is bool`},
		{"min above max", func(dt *DeviceType) { dt.Metrics["x"] = MetricSpec{Type: TypeNumber, Min: f64(130), Max: f64(125)} },
			`device type "thermostat": metrics.x.min: 130 is above max 125`},
		{"NaN max", func(dt *DeviceType) { dt.Metrics["x"] = MetricSpec{Type: TypeNumber, Max: f64(math.NaN())} },
			`device type "thermostat": metrics.x.max: must be a finite number`},
		{"Inf min", func(dt *DeviceType) { dt.Metrics["x"] = MetricSpec{Type: TypeNumber, Min: f64(math.Inf(-1))} },
			`device type "thermostat": metrics.x.min: must be a finite number`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dt := thermostat()
			tt.modify(dt)
			err := dt.Check()
			if err == nil || err.Error() != tt.want {
				t.Fatalf("got %v\nwant %s", err, tt.want)
			}
		})
	}
	if err := (*DeviceType)(nil).Check(); err == nil {
		t.Fatal("nil type passed Check")
	}
}

func TestDeviceTypeValidate(t *testing.T) {
	tests := []struct {
		name    string
		metrics []Metric
		want    string // "" for valid
		code    string
		metric  string
	}{
		{"valid", []Metric{num("temperature", 21.5), boolm("door_open", true), strm("mode", "eco"), num("humidity", 0)}, "", "", ""},
		{"bounds inclusive", []Metric{num("temperature", 125), num("temperature", -40)}, "", "", ""},
		{"above max", []Metric{num("temperature", 150)}, "temperature: 150 above maximum 125", CodeOutOfRange, "temperature"},
		{"below min", []Metric{num("temperature", -40.5)}, "temperature: -40.5 below minimum -40", CodeOutOfRange, "temperature"},
		{"only min", []Metric{num("humidity", -1)}, "humidity: -1 below minimum 0", CodeOutOfRange, "humidity"},
		{"only max", []Metric{num("setpoint", 1e6)}, "setpoint: 1e+06 above maximum 30", CodeOutOfRange, "setpoint"},
		{"bool for number", []Metric{boolm("temperature", true)}, "temperature: must be a number, got bool", CodeWrongType, "temperature"},
		{"number for bool", []Metric{num("door_open", 1)}, "door_open: must be a bool, got number", CodeWrongType, "door_open"},
		{"number for string", []Metric{num("mode", 1)}, "mode: must be a string, got number", CodeWrongType, "mode"},
		{"unknown", []Metric{num("temperature", 1), num("co2", 400)}, "co2: not a metric of device type thermostat (known: door_open, humidity, mode, setpoint, temperature)", CodeUnknownMetric, "co2"},
		{"first failure wins", []Metric{num("temperature", 200), num("mode", 1)}, "temperature: 200 above maximum 125", CodeOutOfRange, "temperature"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := reading(1, tt.metrics...)
			err := thermostat().Validate(&r)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("unexpected %v", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("got %T %v, want *ValidationError", err, err)
			}
			if err.Error() != tt.want || ve.Code != tt.code || ve.Metric != tt.metric || ReasonCode(err) != tt.code {
				t.Fatalf("got %q (code %q, metric %q)\nwant %q (code %q, metric %q)", err, ve.Code, ve.Metric, tt.want, tt.code, tt.metric)
			}
		})
	}
}

func TestDeviceTypeValidatePermissive(t *testing.T) {
	r := reading(1, num("anything", 1), boolm("x", true), strm("y", "z"))
	for name, dt := range map[string]*DeviceType{
		"default": DefaultType(),
		"nil":     nil,
		"accept unknown": {Name: "t", UnknownMetrics: "", Metrics: map[string]MetricSpec{
			"other": {Type: TypeNumber, Max: f64(0)},
		}},
	} {
		if err := dt.Validate(&r); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	strict := &DeviceType{Name: "empty", UnknownMetrics: UnknownReject}
	if err := strict.Validate(&r); err == nil || err.Error() != "anything: not a metric of device type empty (known: none)" {
		t.Errorf("strict empty type: %v", err)
	}
}

func TestReasonCode(t *testing.T) {
	if ReasonCode(nil) != "" || ReasonCode(errors.New("x")) != CodeBadPayload {
		t.Fatal("ReasonCode of nil or plain error")
	}
	wrapped := errors.Join(errors.New("ctx"), &ValidationError{Code: CodeWrongType})
	if ReasonCode(wrapped) != CodeWrongType {
		t.Fatal("ReasonCode does not unwrap")
	}
}
