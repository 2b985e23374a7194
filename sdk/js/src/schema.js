// A small JSON Schema check for action inputs, the subset plugins use: `type` (one or
// a list), `properties`, `required`, `additionalProperties: false`, `enum`,
// `minLength`/`maxLength`, `minimum`/`maximum`, `items`. Names the field, never the value.

const TYPES = {
  object: (v) => v !== null && typeof v === 'object' && !Array.isArray(v),
  array: Array.isArray,
  string: (v) => typeof v === 'string',
  boolean: (v) => typeof v === 'boolean',
  integer: Number.isInteger,
  number: (v) => typeof v === 'number',
  null: (v) => v === null,
};

export function validate(value, schema, path) {
  if (schema.type !== undefined) {
    const kinds = Array.isArray(schema.type) ? schema.type : [schema.type];
    if (!kinds.some((k) => TYPES[k](value))) return `\`${path}\` must be ${kinds.join(' or ')}`;
  }
  if (schema.enum && !schema.enum.includes(value)) return `\`${path}\` must be one of ${schema.enum.join(', ')}`;
  if (typeof value === 'string') {
    if (value.length < (schema.minLength ?? 0)) return `\`${path}\` is shorter than ${schema.minLength} characters`;
    if (schema.maxLength !== undefined && value.length > schema.maxLength)
      return `\`${path}\` is longer than ${schema.maxLength} characters`;
  }
  if (typeof value === 'number') {
    if (schema.minimum !== undefined && value < schema.minimum) return `\`${path}\` is below ${schema.minimum}`;
    if (schema.maximum !== undefined && value > schema.maximum) return `\`${path}\` is above ${schema.maximum}`;
  }
  if (TYPES.object(value)) {
    const props = schema.properties ?? {};
    for (const name of schema.required ?? []) {
      if (!(name in value)) return `\`${path}.${name}\` is required`;
    }
    for (const [name, item] of Object.entries(value)) {
      if (name in props) {
        const problem = validate(item, props[name], `${path}.${name}`);
        if (problem) return problem;
      } else if (schema.additionalProperties === false) {
        return `\`${path}\` has unknown field \`${name}\``;
      }
    }
  }
  if (Array.isArray(value) && schema.items) {
    for (let i = 0; i < value.length; i++) {
      const problem = validate(value[i], schema.items, `${path}[${i}]`);
      if (problem) return problem;
    }
  }
  return null;
}
