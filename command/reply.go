package command

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Incoming is a device publish handed to the service by the broker.
type Incoming struct {
	// Device is the publishing device: its authenticated client id.
	Device string
	// Topic is the topic name it published to.
	Topic   string
	Payload []byte
	// CorrelationData is the MQTT 5 property, if the device sent one.
	CorrelationData []byte
}

// Reply is what a device publishes on devices/{id}/replies/{command id}.
type Reply struct {
	Status string          `json:"status"` // "ok" or "error"
	Result json.RawMessage `json:"result,omitempty"`
	Error  string          `json:"error,omitempty"`
}

// Reasons a reply is ignored (label of fieldhub_command_replies_ignored_total).
const (
	ignoredMalformed = "malformed" // not a reply: bad topic, JSON, status or correlation data
	ignoredUnknown   = "unknown"   // no such command
	ignoredForeign   = "foreign"   // the command belongs to another device
	ignoredNotSent   = "not_sent"  // the command was never published
	ignoredDuplicate = "duplicate" // the command already has its reply
	ignoredLate      = "late"      // the command expired or was cancelled first
)

// HandleReply records a device's reply: succeeded for status "ok", failed
// for "error". It runs in the broker's handler, before the PUBACK, and
// does one ledger read and one write. A reply that does not apply
// (malformed, for an unknown, foreign or final command) is counted and
// ignored: the message itself was received fine, so HandleReply returns
// nil and the device gets its PUBACK. Only a ledger failure is returned
// (the broker then withholds the PUBACK, so the device sends it again).
func (s *Service) HandleReply(ctx context.Context, m Incoming) error {
	t := telemetry.ParseTopic(m.Topic)
	if t.Kind != telemetry.TopicReply {
		s.ignore(ignoredMalformed, m, "not a reply topic")
		return nil
	}
	// The ACL lets a device publish only to its own replies; checked
	// again here because the service must not trust its caller for it.
	if t.Device != m.Device {
		s.ignore(ignoredForeign, m, "topic of another device")
		return nil
	}
	id := t.Name
	if len(m.CorrelationData) > 0 && !bytes.Equal(m.CorrelationData, []byte(id)) {
		s.ignore(ignoredMalformed, m, "correlation data does not match the topic's command id")
		return nil
	}
	r, err := ParseReply(m.Payload)
	if err != nil {
		s.ignore(ignoredMalformed, m, err.Error())
		return nil
	}

	cur, err := s.ledger.Command(ctx, id)
	if errors.Is(err, registry.ErrNotFound) {
		s.ignore(ignoredUnknown, m, "no such command")
		return nil
	} else if err != nil {
		return fmt.Errorf("reply to %s: %w", id, err)
	}
	if cur.Device != m.Device {
		s.ignore(ignoredForeign, m, "command of device "+cur.Device)
		return nil
	}
	to, errText := registry.CommandSucceeded, ""
	if r.Status == "error" {
		to, errText = registry.CommandFailed, r.Error
		if errText == "" {
			errText = "the device reported an error"
		}
	}
	// Live are sent and delivered: a reply may overtake the broker's
	// PUBACK event, so sent counts too.
	for {
		switch {
		case cur.State == registry.CommandQueued:
			s.ignore(ignoredNotSent, m, "command was never sent")
			return nil
		case cur.State == registry.CommandSucceeded, cur.State == registry.CommandFailed:
			s.ignore(ignoredDuplicate, m, "command already "+string(cur.State))
			return nil
		case Final(cur.State):
			s.ignore(ignoredLate, m, "command already "+string(cur.State))
			return nil
		}
		c, err := s.ledger.TransitionCommand(ctx, id, []registry.CommandState{cur.State}, to, time.Time{}, r.Result, errText, "reply "+r.Status)
		if errors.Is(err, registry.ErrConflict) {
			// It moved (sent -> delivered, or expired) since the read;
			// states only move forward, so this loop ends.
			if cur, err = s.ledger.Command(ctx, id); err != nil {
				return fmt.Errorf("reply to %s: %w", id, err)
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("reply to %s: %w", id, err)
		}
		s.announce(c, cur.State, to)
		return nil
	}
}

// ParseReply decodes and checks a reply payload.
func ParseReply(payload []byte) (Reply, error) {
	var r Reply
	d := json.NewDecoder(bytes.NewReader(payload))
	if err := d.Decode(&r); err != nil {
		return Reply{}, fmt.Errorf("reply is not a JSON object: %v", err)
	}
	if d.More() {
		return Reply{}, errors.New("reply has data after the JSON object")
	}
	switch r.Status {
	case "ok", "error":
	default:
		return Reply{}, fmt.Errorf("reply status %q is not \"ok\" or \"error\"", r.Status)
	}
	if string(trimSpace(r.Result)) == "null" {
		r.Result = nil
	}
	if len(r.Error) > maxErrorLen {
		r.Error = r.Error[:maxErrorLen]
	}
	return r, nil
}

func (s *Service) ignore(reason string, m Incoming, why string) {
	s.m.repliesIgnored.WithLabelValues(reason).Inc()
	s.log.Debug("reply ignored", "reason", reason, "device", m.Device, "topic", m.Topic, "why", why)
}
