// Package strict decodes JSON from outside strictly: unknown fields and
// trailing data are errors. Standard library only (the filter uses it).
package strict

import (
	"bytes"
	"encoding/json"
	"errors"
)

// Decode decodes one JSON value from data into v.
func Decode(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the object")
	}
	return nil
}
