// Package configs embeds fieldhub's default configuration files, so the
// binary runs with documented defaults and no file on disk.
package configs

import _ "embed"

// Default is configs/fieldhub.yaml: every key with its default value.
//
//go:embed fieldhub.yaml
var Default []byte

// DeviceTypes is configs/device-types.yaml: the built-in device types.
//
//go:embed device-types.yaml
var DeviceTypes []byte
