package k8s

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	istioext "istio.io/client-go/pkg/apis/extensions/v1alpha1"
	istionet "istio.io/client-go/pkg/apis/networking/v1alpha3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// object is one decoded manifest.
type object struct {
	kind, name string
	obj        any // *appsv1.Deployment, *corev1.Service, ... (typed)
}

// decoders maps apiVersion/kind to a constructor of the real type. A kind
// not listed is an error: the chart and render emit nothing unvalidated.
var decoders = map[string]func() any{
	"v1/ConfigMap":                                        func() any { return new(corev1.ConfigMap) },
	"v1/Service":                                          func() any { return new(corev1.Service) },
	"v1/Secret":                                           func() any { return new(corev1.Secret) },
	"apps/v1/Deployment":                                  func() any { return new(appsv1.Deployment) },
	"networking.k8s.io/v1/NetworkPolicy":                  func() any { return new(networkingv1.NetworkPolicy) },
	"extensions.istio.io/v1alpha1/WasmPlugin":             func() any { return new(istioext.WasmPlugin) },
	"networking.istio.io/v1alpha3/EnvoyFilter":            func() any { return new(istionet.EnvoyFilter) },
	"gateway.envoyproxy.io/v1alpha1/EnvoyExtensionPolicy": func() any { return new(egv1a1.EnvoyExtensionPolicy) },
}

// decodeStream splits a YAML stream into documents and decodes each one
// strictly (decodeStrict); empty documents (templates that render nothing)
// are skipped.
func decodeStream(src string) ([]object, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(src)))
	var out []object
	for i := 0; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		o, err := decodeStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w\n%s", i, err, doc)
		}
		out = append(out, o)
	}
}

func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for line := range bytes.Lines(doc) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' && !bytes.Equal(t, []byte("---")) {
			b.Write(line)
		}
	}
	return b.Bytes()
}

// decodeStrict decodes one YAML document into its real type: duplicate
// keys and unknown fields are errors at every level. Istio's generated
// UnmarshalJSON reads specs leniently (jsonpb AllowUnknownFields), so their
// specs are decoded again with protojson, which refuses unknown fields.
func decodeStrict(doc []byte) (object, error) {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return object{}, fmt.Errorf("YAML: %w", err)
	}
	var tm struct {
		metav1.TypeMeta
		Metadata metav1.ObjectMeta `json:"metadata"`
	}
	if err := json.Unmarshal(js, &tm); err != nil {
		return object{}, err
	}
	key := tm.APIVersion + "/" + tm.Kind
	mk, ok := decoders[key]
	if !ok {
		return object{}, fmt.Errorf("%s: no type to validate it against", key)
	}
	obj := mk()
	// The API server's own strict decoding: unknown fields, duplicate
	// fields and fields whose case differs (encoding/json would take
	// "rootId" for "rootID") are all errors.
	strict, err := sigsjson.UnmarshalStrict(js, obj, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err == nil {
		err = errors.Join(strict...)
	}
	if err != nil {
		return object{}, fmt.Errorf("%s %s: %w", tm.Kind, tm.Metadata.Name, err)
	}
	var spec proto.Message
	switch o := obj.(type) {
	case *istioext.WasmPlugin:
		spec = &o.Spec
	case *istionet.EnvoyFilter:
		spec = &o.Spec
	}
	if spec != nil {
		var raw struct {
			Spec json.RawMessage `json:"spec"`
		}
		if err := json.Unmarshal(js, &raw); err != nil {
			return object{}, err
		}
		proto.Reset(spec)
		if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(raw.Spec, spec); err != nil {
			return object{}, fmt.Errorf("%s %s: spec: %w", tm.Kind, tm.Metadata.Name, err)
		}
	}
	return object{kind: tm.Kind, name: tm.Metadata.Name, obj: obj}, nil
}

// byKind returns the objects of one type.
func byKind[T any](objs []object) []T {
	var out []T
	for _, o := range objs {
		if t, ok := o.obj.(T); ok {
			out = append(out, t)
		}
	}
	return out
}
