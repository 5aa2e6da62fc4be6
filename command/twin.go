package command

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/telemetry"
)

// DesiredMessage is the retained payload on devices/{id}/twin/desired.
type DesiredMessage struct {
	Version int64           `json:"version"`
	Desired json.RawMessage `json:"desired"`
}

// ReportedMessage is what a device publishes on devices/{id}/twin/reported
// (a bare JSON object is accepted too). Version is the desired version the
// device has applied; it is informational and not stored (the hub numbers
// reported versions itself).
type ReportedMessage struct {
	Version  int64           `json:"version,omitempty"`
	Reported json.RawMessage `json:"reported"`
}

// TwinView is a device's twin with the delta computed.
type TwinView struct {
	Device   string           `json:"device"`
	Desired  registry.TwinDoc `json:"desired"`
	Reported registry.TwinDoc `json:"reported"`
	// Delta holds the desired top-level keys whose reported value differs
	// (or is missing), with their desired values. Values are compared as
	// decoded JSON (deep equality; numbers as float64), only at the top
	// level: a nested object that differs anywhere is in the delta whole.
	Delta map[string]json.RawMessage `json:"delta"`
}

// SetDesired stores a device's new desired state and publishes it retained
// at QoS 1 on devices/{id}/twin/desired, so the device gets it now or when
// it next subscribes. The document is stored even if the publish fails;
// the error says so, and the next subscribe of the device publishes it.
func (s *Service) SetDesired(ctx context.Context, device string, doc json.RawMessage) (registry.TwinDoc, error) {
	// One at a time: two publishes racing could leave the older version
	// retained in the broker.
	s.twinMu.Lock()
	defer s.twinMu.Unlock()
	td, err := s.ledger.SetDesired(ctx, device, doc, time.Time{})
	if err != nil {
		if errors.Is(err, registry.ErrInvalid) {
			s.m.twinRejected.WithLabelValues("desired_invalid").Inc()
		}
		return registry.TwinDoc{}, fmt.Errorf("set desired twin of %q: %w", device, err)
	}
	if err := s.publishDesired(device, td); err != nil {
		return td, fmt.Errorf("desired twin of %q stored as version %d, but not published: %w", device, td.Version, err)
	}
	return td, nil
}

// publishDesired publishes a desired document retained; twinMu is held.
func (s *Service) publishDesired(device string, td registry.TwinDoc) error {
	b, err := json.Marshal(DesiredMessage{Version: td.Version, Desired: td.Doc})
	if err != nil {
		return err
	}
	if err := s.pub.Publish(telemetry.TwinDesiredTopic(device), b, PublishOptions{Retain: true, ContentType: "application/json"}); err != nil {
		s.m.publishErrors.Inc()
		return err
	}
	s.twinPublished[device] = td.Version
	return nil
}

// republishDesired publishes the stored desired state when the broker does
// not retain it yet: its retained store lives in memory, so after a hub
// restart a subscribing device would otherwise get nothing.
func (s *Service) republishDesired(ctx context.Context, device string) error {
	s.twinMu.Lock()
	defer s.twinMu.Unlock()
	tw, err := s.ledger.Twin(ctx, device)
	if errors.Is(err, registry.ErrNotFound) {
		return nil
	} else if err != nil {
		return err
	}
	if tw.Desired.Version == 0 || s.twinPublished[device] >= tw.Desired.Version {
		return nil
	}
	return s.publishDesired(device, tw.Desired)
}

// Twin returns a device's desired and reported state and their delta.
func (s *Service) Twin(ctx context.Context, device string) (TwinView, error) {
	tw, err := s.ledger.Twin(ctx, device)
	if err != nil {
		return TwinView{}, err
	}
	delta, err := Delta(tw.Desired.Doc, tw.Reported.Doc)
	if err != nil {
		return TwinView{}, fmt.Errorf("twin of %q: %w", device, err)
	}
	return TwinView{Device: device, Desired: tw.Desired, Reported: tw.Reported, Delta: delta}, nil
}

// Delta returns the top-level keys of desired whose value in reported is
// missing or different (deep equality of the decoded JSON).
func Delta(desired, reported json.RawMessage) (map[string]json.RawMessage, error) {
	var d, r map[string]json.RawMessage
	if err := json.Unmarshal(orEmpty(desired), &d); err != nil {
		return nil, fmt.Errorf("desired document: %w", err)
	}
	if err := json.Unmarshal(orEmpty(reported), &r); err != nil {
		return nil, fmt.Errorf("reported document: %w", err)
	}
	delta := map[string]json.RawMessage{}
	for k, dv := range d {
		rv, ok := r[k]
		if !ok || !jsonEqual(dv, rv) {
			delta[k] = dv
		}
	}
	return delta, nil
}

func orEmpty(b json.RawMessage) json.RawMessage {
	if len(trimSpace(b)) == 0 {
		return json.RawMessage("{}")
	}
	return b
}

func jsonEqual(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return bytes.Equal(a, b)
	}
	return reflect.DeepEqual(x, y)
}

// HandleReported stores a device's reported state. It accepts
// {"version": N, "reported": {...}} or a bare JSON object. An invalid
// report is counted and returned wrapping ErrRejected.
func (s *Service) HandleReported(ctx context.Context, m Incoming) error {
	t := telemetry.ParseTopic(m.Topic)
	if t.Kind != telemetry.TopicTwinReported || t.Device != m.Device {
		s.m.twinRejected.WithLabelValues("foreign").Inc()
		return fmt.Errorf("%w: %s may not report the twin on %q", ErrRejected, m.Device, m.Topic)
	}
	doc, err := ParseReported(m.Payload)
	if err != nil {
		s.m.twinRejected.WithLabelValues("malformed").Inc()
		return fmt.Errorf("%w: twin report of %s: %v", ErrRejected, m.Device, err)
	}
	if _, err := s.ledger.SetReported(ctx, m.Device, doc, time.Time{}); err != nil {
		if errors.Is(err, registry.ErrInvalid) {
			s.m.twinRejected.WithLabelValues("invalid").Inc()
			return fmt.Errorf("%w: twin report of %s: %v", ErrRejected, m.Device, err)
		}
		if errors.Is(err, registry.ErrNotFound) {
			s.m.twinRejected.WithLabelValues("unknown_device").Inc()
			return fmt.Errorf("%w: twin report of %s: %v", ErrRejected, m.Device, err)
		}
		return fmt.Errorf("twin report of %s: %w", m.Device, err)
	}
	return nil
}

// ParseReported extracts the reported document from a twin report: the
// "reported" member of an envelope (an object whose only keys are
// "reported", an object, and optionally "version", a number), else the
// whole payload, which must be a JSON object.
func ParseReported(payload []byte) (json.RawMessage, error) {
	p := trimSpace(payload)
	if len(p) == 0 || p[0] != '{' || !json.Valid(p) {
		return nil, errors.New("payload is not a JSON object")
	}
	var env map[string]json.RawMessage
	if err := json.Unmarshal(p, &env); err != nil {
		return nil, err
	}
	rep, ok := env["reported"]
	if !ok {
		return p, nil
	}
	rest := len(env) - 1
	if v, ok := env["version"]; ok {
		var n float64
		if json.Unmarshal(v, &n) != nil {
			return p, nil // not our envelope: a device key named "version"
		}
		rest--
	}
	if r := trimSpace(rep); rest == 0 && len(r) > 0 && r[0] == '{' {
		return r, nil
	}
	return p, nil
}
