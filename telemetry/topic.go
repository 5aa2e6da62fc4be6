package telemetry

import (
	"errors"
	"fmt"
	"strings"
)

// MaxDeviceIDLen bounds device ids so topics stay short.
const MaxDeviceIDLen = 128

// ValidateDeviceID checks a device id against fieldhub's safe charset:
// 1 to 128 characters of ASCII letters, digits, '-', '_', '.' and ':', not
// starting with '.'. This excludes the MQTT wildcards '+' and '#', the level
// separator '/', NUL, and a leading '$' (reserved for broker topics such as
// $SYS, [MQTT-4.7.2-1]), so an id can be placed in a topic verbatim.
func ValidateDeviceID(id string) error {
	if id == "" {
		return errors.New("device id is empty")
	}
	if len(id) > MaxDeviceIDLen {
		return fmt.Errorf("device id is %d characters, more than %d", len(id), MaxDeviceIDLen)
	}
	if id[0] == '.' {
		return errors.New("device id may not start with '.'")
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '-', c == '_', c == '.', c == ':':
		default:
			return fmt.Errorf("device id has %q at position %d; allowed are letters, digits, '-', '_', '.' and ':'", c, i)
		}
	}
	return nil
}

// TopicKind names the device topics of fieldhub's topic contract.
type TopicKind uint8

const (
	TopicUnknown       TopicKind = iota
	TopicTelemetry               // devices/{id}/telemetry            device → hub
	TopicCommand                 // devices/{id}/commands/{name}      hub → device
	TopicReply                   // devices/{id}/replies/{command id} device → hub
	TopicTwinDesired             // devices/{id}/twin/desired         hub → device
	TopicTwinReported            // devices/{id}/twin/reported        device → hub
	TopicErrors                  // devices/{id}/errors               hub → device
	TopicCommandFilter           // devices/{id}/commands/#           subscription filter only
	TopicReplyFilter             // devices/{id}/replies/#            subscription filter only
)

// Topic is a parsed device topic.
type Topic struct {
	Kind   TopicKind
	Device string
	// Name is the command name (TopicCommand) or the command id (TopicReply).
	Name string
}

// TopicPrefix is the first level of every device topic.
const TopicPrefix = "devices/"

// ParseTopic parses a topic name or filter of the device contract. Anything
// else, including filters with wildcards in other places, yields
// TopicUnknown. It never allocates beyond the returned strings' headers.
func ParseTopic(topic string) Topic {
	rest, ok := strings.CutPrefix(topic, TopicPrefix)
	if !ok {
		return Topic{}
	}
	id, rest, ok := strings.Cut(rest, "/")
	if !ok || ValidateDeviceID(id) != nil {
		return Topic{}
	}
	t := Topic{Device: id}
	switch rest {
	case "telemetry":
		t.Kind = TopicTelemetry
	case "twin/desired":
		t.Kind = TopicTwinDesired
	case "twin/reported":
		t.Kind = TopicTwinReported
	case "errors":
		t.Kind = TopicErrors
	case "commands/#":
		t.Kind = TopicCommandFilter
	case "replies/#":
		t.Kind = TopicReplyFilter
	default:
		kind, name, ok := strings.Cut(rest, "/")
		if !ok || !validLevel(name) {
			return Topic{}
		}
		switch kind {
		case "commands":
			t.Kind = TopicCommand
		case "replies":
			t.Kind = TopicReply
		default:
			return Topic{}
		}
		t.Name = name
	}
	return t
}

// validLevel accepts one non-empty topic level without wildcards or NUL.
func validLevel(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '/', '+', '#', 0:
			return false
		}
	}
	return true
}

// Topic builders for the hub's side of the contract.

func TelemetryTopic(id string) string     { return TopicPrefix + id + "/telemetry" }
func CommandTopic(id, name string) string { return TopicPrefix + id + "/commands/" + name }
func ReplyTopic(id, cmdID string) string  { return TopicPrefix + id + "/replies/" + cmdID }
func TwinDesiredTopic(id string) string   { return TopicPrefix + id + "/twin/desired" }
func TwinReportedTopic(id string) string  { return TopicPrefix + id + "/twin/reported" }
func ErrorsTopic(id string) string        { return TopicPrefix + id + "/errors" }
