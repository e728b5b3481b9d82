//! The pickle machine: a strict, bounded interpreter of the opcodes `torch.save` emits, with a
//! fixed list of callables rebuilt in Rust.

use super::*;

/// Most values on the stack (marks included), memo entries, and nesting of containers.
pub(super) const MAX_STACK: usize = 1 << 20;
pub(super) const MAX_MEMO: usize = 1 << 20;
pub(super) const MAX_DEPTH: u32 = 64;
/// Most dimensions of a tensor (PyTorch allows 64; no checkpoint qc reads needs more than 32).
pub(super) const MAX_DIMS: usize = 32;

#[derive(Clone, Debug)]
pub(super) enum Value {
    None,
    /// A bool (only `requires_grad`, whose value qc does not need).
    Bool,
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    /// Bytes (not part of a state dict; kept only as a kind).
    Bytes,
    Tuple(Rc<Vec<Value>>, u32),
    List(Vec<Value>, u32),
    Dict(Vec<(Value, Value)>, u32),
    /// `module.name`
    Global(Rc<str>),
    Storage(Rc<Storage>),
    Tensor(Rc<Raw>),
    QTensor(Rc<RawQ>),
    /// A value that cannot be built; the message is reported with the key that holds it.
    Invalid(Rc<str>),
}

impl Value {
    pub(super) fn depth(&self) -> u32 {
        match self {
            Value::Tuple(_, d) | Value::List(_, d) | Value::Dict(_, d) => *d,
            _ => 0,
        }
    }
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "a bool",
            Value::Int(_) => "an int",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Bytes => "bytes",
            Value::Tuple(..) => "a tuple",
            Value::List(..) => "a list",
            Value::Dict(..) => "a dict",
            Value::Global(_) => "a global name",
            Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
            Value::QTensor(_) => "a quantized tensor",
            Value::Invalid(_) => "an invalid value",
        }
    }
    pub(super) fn invalid(message: impl Into<String>) -> Value {
        Value::Invalid(Rc::from(message.into()))
    }
}

pub(super) enum Memo {
    Value(Value),
    /// A list or dict: shared by reference in Python, which this machine does not model.
    Mutable,
}

pub(super) type Loader<'l> = dyn FnMut(&str, usize) -> Result<Rc<Vec<u8>>, String> + 'l;

pub(super) struct Machine<'a, 'l> {
    pub(super) input: &'a [u8],
    pub(super) pos: usize,
    pub(super) stack: Vec<Value>,
    pub(super) marks: Vec<usize>,
    pub(super) memo: HashMap<u32, Memo>,
    pub(super) big_endian: bool,
    /// Bytes that materialised tensors may still take.
    pub(super) budget: usize,
    pub(super) storages: HashMap<String, Rc<Storage>>,
    pub(super) load: &'l mut Loader<'l>,
}

pub(super) type Fail = String;

impl<'a, 'l> Machine<'a, 'l> {
    pub(super) fn new(input: &'a [u8], big_endian: bool, budget: usize, load: &'l mut Loader<'l>) -> Self {
        Machine {
            input,
            pos: 0,
            stack: vec![],
            marks: vec![],
            memo: HashMap::new(),
            big_endian,
            budget,
            storages: HashMap::new(),
            load,
        }
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], Fail> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.input.len())
            .ok_or_else(|| "the pickle ends in the middle of an instruction".to_string())?;
        let s = &self.input[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    pub(super) fn byte(&mut self) -> Result<u8, Fail> {
        Ok(self.take(1)?[0])
    }
    pub(super) fn u32le(&mut self) -> Result<u32, Fail> {
        Ok(u32::from_le_bytes(arr(self.take(4)?)))
    }
    pub(super) fn len_u64(&mut self) -> Result<usize, Fail> {
        let n = u64::from_le_bytes(arr(self.take(8)?));
        usize::try_from(n).map_err(|_| "a length does not fit in memory".to_string())
    }
    pub(super) fn line(&mut self) -> Result<&'a str, Fail> {
        let rest = &self.input[self.pos..];
        let end = rest
            .iter()
            .take(1024)
            .position(|b| *b == b'\n')
            .ok_or_else(|| "a GLOBAL name is not terminated within 1024 bytes".to_string())?;
        let s = std::str::from_utf8(&rest[..end]).map_err(|_| "a GLOBAL name is not UTF-8".to_string())?;
        self.pos += end + 1;
        Ok(s)
    }
    pub(super) fn text(&mut self, n: usize) -> Result<Value, Fail> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| "a string is not valid UTF-8".to_string())?;
        Ok(Value::Str(Rc::from(s)))
    }

    pub(super) fn push(&mut self, v: Value) -> Result<(), Fail> {
        if self.stack.len() >= MAX_STACK {
            return Err(format!("the pickle stack grows past {MAX_STACK} values"));
        }
        self.stack.push(v);
        Ok(())
    }
    pub(super) fn pop(&mut self) -> Result<Value, Fail> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("an instruction needs a value the stack does not have".into());
        }
        self.stack.pop().ok_or_else(|| "the stack is empty".to_string())
    }
    pub(super) fn top(&mut self) -> Result<&mut Value, Fail> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("an instruction needs a value the stack does not have".into());
        }
        self.stack.last_mut().ok_or_else(|| "the stack is empty".to_string())
    }
    /// The values since the last MARK, which is removed.
    pub(super) fn pop_mark(&mut self) -> Result<Vec<Value>, Fail> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| "an instruction needs a MARK that is not there".to_string())?;
        Ok(self.stack.split_off(m))
    }
    pub(super) fn tuple(items: Vec<Value>) -> Result<Value, Fail> {
        let depth = child_depth(items.iter())?;
        Ok(Value::Tuple(Rc::new(items), depth))
    }
    pub(super) fn memo_put(&mut self, idx: u32) -> Result<(), Fail> {
        let v = match self.top()? {
            Value::List(..) | Value::Dict(..) => Memo::Mutable,
            v => Memo::Value(v.clone()),
        };
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&idx) {
            return Err(format!("the pickle memo grows past {MAX_MEMO} entries"));
        }
        self.memo.insert(idx, v);
        Ok(())
    }
    pub(super) fn memo_get(&mut self, idx: u32) -> Result<(), Fail> {
        let v = match self.memo.get(&idx) {
            Some(Memo::Value(v)) => v.clone(),
            Some(Memo::Mutable) => {
                return Err(format!(
                    "memo entry {idx} is a list or dict used twice (shared by reference), which qc's reader does not support"
                ))
            }
            None => return Err(format!("memo entry {idx} is read before it is written")),
        };
        self.push(v)
    }

    pub(super) fn run(mut self) -> Result<Value, Fail> {
        loop {
            let at = self.pos;
            let op = self.byte()?;
            let r = self.step(op);
            match r {
                Ok(true) => {
                    return self.stack.pop().ok_or_else(|| "STOP with an empty stack".to_string());
                }
                Ok(false) => {}
                Err(m) => return Err(format!("{m} (opcode 0x{op:02x} at byte {at})")),
            }
        }
    }

    /// One instruction; `Ok(true)` at STOP.
    pub(super) fn step(&mut self, op: u8) -> Result<bool, Fail> {
        match op {
            0x80 => {
                let p = self.byte()?;
                if !(2..=5).contains(&p) {
                    return Err(format!("pickle protocol {p}; qc reads protocols 2 to 5"));
                }
            }
            0x95 => {
                self.len_u64()?; // FRAME: a hint only
            }
            b'.' => return Ok(true),
            b'(' => {
                if self.marks.len() >= MAX_STACK {
                    return Err("too many MARKs".into());
                }
                self.marks.push(self.stack.len());
            }
            b'}' => self.push(Value::Dict(vec![], 1))?,
            b']' => self.push(Value::List(vec![], 1))?,
            b')' => self.push(Value::Tuple(Rc::new(vec![]), 1))?,
            b'N' => self.push(Value::None)?,
            0x88 => self.push(Value::Bool)?,
            0x89 => self.push(Value::Bool)?,
            b'K' => {
                let v = self.byte()?;
                self.push(Value::Int(i64::from(v)))?
            }
            b'M' => {
                let v = u16::from_le_bytes(arr(self.take(2)?));
                self.push(Value::Int(i64::from(v)))?
            }
            b'J' => {
                let v = i32::from_le_bytes(arr(self.take(4)?));
                self.push(Value::Int(i64::from(v)))?
            }
            0x8a => {
                let n = usize::from(self.byte()?);
                let b = self.take(n)?;
                self.push(Value::Int(long(b)?))?
            }
            0x8b => {
                let n = i32::from_le_bytes(arr(self.take(4)?));
                let n = usize::try_from(n).map_err(|_| "LONG4 with a negative length".to_string())?;
                let b = self.take(n)?;
                self.push(Value::Int(long(b)?))?
            }
            b'G' => {
                let v = f64::from_be_bytes(arr(self.take(8)?));
                self.push(Value::Float(v))?
            }
            b'X' => {
                let n = self.u32le()? as usize;
                let v = self.text(n)?;
                self.push(v)?
            }
            0x8c => {
                let n = usize::from(self.byte()?);
                let v = self.text(n)?;
                self.push(v)?
            }
            0x8d => {
                let n = self.len_u64()?;
                let v = self.text(n)?;
                self.push(v)?
            }
            b'C' => {
                let n = usize::from(self.byte()?);
                self.take(n)?;
                self.push(Value::Bytes)?
            }
            b'B' => {
                let n = self.u32le()? as usize;
                self.take(n)?;
                self.push(Value::Bytes)?
            }
            0x8e => {
                let n = self.len_u64()?;
                self.take(n)?;
                self.push(Value::Bytes)?
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                let t = Self::tuple(items)?;
                self.push(t)?
            }
            b't' => {
                let items = self.pop_mark()?;
                let t = Self::tuple(items)?;
                self.push(t)?
            }
            b'l' => {
                let items = self.pop_mark()?;
                let depth = child_depth(items.iter())?;
                self.push(Value::List(items, depth))?
            }
            b'd' => {
                let items = self.pop_mark()?;
                let d = pairs(items)?;
                let depth = child_depth(d.iter().flat_map(|(k, v)| [k, v]))?;
                self.push(Value::Dict(d, depth))?
            }
            b'0' => {
                self.pop()?;
            }
            b'2' => {
                let v = self.top()?.clone();
                self.push(v)?
            }
            b'q' => {
                let i = self.byte()?;
                self.memo_put(u32::from(i))?
            }
            b'r' => {
                let i = self.u32le()?;
                self.memo_put(i)?
            }
            0x94 => {
                let i = u32::try_from(self.memo.len()).map_err(|_| "memo too large".to_string())?;
                self.memo_put(i)?
            }
            b'h' => {
                let i = self.byte()?;
                self.memo_get(u32::from(i))?
            }
            b'j' => {
                let i = self.u32le()?;
                self.memo_get(i)?
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.push(Value::Global(Rc::from(format!("{module}.{name}"))))?
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => self.push(Value::Global(Rc::from(format!("{m}.{n}"))))?,
                    _ => return Err("STACK_GLOBAL needs two strings".into()),
                }
            }
            b'a' => {
                let v = self.pop()?;
                append(self.top()?, vec![v])?
            }
            b'e' => {
                let items = self.pop_mark()?;
                append(self.top()?, items)?
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                set_items(self.top()?, vec![(k, v)])?
            }
            b'u' => {
                let items = self.pop_mark()?;
                let p = pairs(items)?;
                set_items(self.top()?, p)?
            }
            b'Q' => {
                let pid = self.pop()?;
                let v = self.persistent_load(pid);
                self.push(v)?
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let v = self.call(callable, args)?;
                self.push(v)?
            }
            0x81 => {
                let _args = self.pop()?;
                let cls = self.pop()?;
                let v = match cls {
                    Value::Global(g) => Value::invalid(format!(
                        "the pickle builds a `{}` object, which qc does not read",
                        clip(&g)
                    )),
                    other => Value::invalid(format!("NEWOBJ on {}", other.kind())),
                };
                self.push(v)?
            }
            b'b' => {
                let _state = self.pop()?;
                match self.top()? {
                    // An OrderedDict's state is its attributes: a state_dict's `_metadata`
                    // (module versions), which qc does not need.
                    Value::Dict(..) | Value::Invalid(_) => {}
                    other => {
                        let k = other.kind();
                        *other = Value::invalid(format!("BUILD (object state) on {k}, which qc does not read"));
                    }
                }
            }
            other => {
                return Err(format!(
                    "unsupported pickle opcode 0x{other:02x}; qc reads what torch.save writes"
                ))
            }
        }
        Ok(false)
    }

    /// `('storage', torch.FloatStorage, key, location, numel)`: the storage, loaded once per key.
    pub(super) fn persistent_load(&mut self, pid: Value) -> Value {
        let Value::Tuple(items, _) = &pid else {
            return Value::invalid(format!("a persistent id is {}, not a tuple", pid.kind()));
        };
        let (kind, class, key, numel) = match items.as_slice() {
            [Value::Str(k), Value::Global(c), Value::Str(key), _location, Value::Int(n)] => (k, c, key, *n),
            _ => return Value::invalid("a persistent id is not ('storage', type, key, location, numel)"),
        };
        if &**kind != "storage" {
            return Value::invalid(format!("persistent id of kind `{}`", clip(kind)));
        }
        let Some(stype) = SType::from_storage(class) else {
            return Value::invalid(format!("storage type `{}`, which qc does not read", clip(class)));
        };
        let elem = stype.map_or(1, SType::size);
        let Some(nbytes) = usize::try_from(numel).ok().and_then(|n| n.checked_mul(elem)) else {
            return Value::invalid(format!("storage `{}` has an impossible size {numel}", clip(key)));
        };
        if let Some(s) = self.storages.get(&**key) {
            if s.stype != stype || s.data.len() != nbytes {
                return Value::invalid(format!("storage `{}` is used with two types or sizes", clip(key)));
            }
            return Value::Storage(s.clone());
        }
        match (self.load)(key, nbytes) {
            Ok(data) => {
                let s = Rc::new(Storage { stype, data });
                self.storages.insert(key.to_string(), s.clone());
                Value::Storage(s)
            }
            Err(m) => Value::invalid(m),
        }
    }

    /// REDUCE: only the callables of the module docs; anything else becomes an invalid value.
    pub(super) fn call(&mut self, callable: Value, args: Value) -> Result<Value, Fail> {
        let Value::Global(name) = callable else {
            return Ok(match callable {
                Value::Invalid(m) => Value::Invalid(m),
                other => Value::invalid(format!("the pickle calls {}", other.kind())),
            });
        };
        let Value::Tuple(args, _) = args else {
            return Err("REDUCE arguments are not a tuple".into());
        };
        let a = args.as_slice();
        let r = match &*name {
            "collections.OrderedDict" => match a {
                [] => Ok(Value::Dict(vec![], 1)),
                _ => Err("collections.OrderedDict with arguments".to_string()),
            },
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => match a {
                [storage, offset, size, stride, ..] => self.rebuild(storage, offset, size, stride, None),
                _ => Err(format!("`{name}` with {} arguments", a.len())),
            },
            "torch._utils._rebuild_tensor_v3" => match a {
                [storage, offset, size, stride, _rg, _hooks, dtype, ..] => match dtype {
                    Value::Global(d) => match SType::from_dtype(d) {
                        Some(t) => self.rebuild(storage, offset, size, stride, Some(t)),
                        None => Err(format!("dtype `{}`, which qc does not read", clip(d))),
                    },
                    _ => Err("`_rebuild_tensor_v3` without a dtype".into()),
                },
                _ => Err(format!("`{name}` with {} arguments", a.len())),
            },
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => match a.first() {
                Some(v @ (Value::Tensor(_) | Value::QTensor(_) | Value::Invalid(_))) => Ok(v.clone()),
                _ => Err(format!("`{name}` without a tensor")),
            },
            "torch._utils._rebuild_qtensor" => match a {
                [storage, offset, size, stride, qparams, ..] => self.rebuild_q(storage, offset, size, stride, qparams),
                _ => Err(format!("`{name}` with {} arguments", a.len())),
            },
            other => Err(format!("unsupported pickle global `{}`", clip(other))),
        };
        Ok(r.unwrap_or_else(Value::invalid))
    }

    /// A tensor from its storage and view: shape, strides and offset checked against the
    /// storage, then copied contiguous.
    pub(super) fn rebuild(
        &mut self,
        storage: &Value,
        offset: &Value,
        size: &Value,
        stride: &Value,
        dtype: Option<SType>,
    ) -> Result<Value, String> {
        self.materialise(storage, offset, size, stride, dtype)
            .map(|raw| Value::Tensor(Rc::new(raw)))
    }

    pub(super) fn materialise(
        &mut self,
        storage: &Value,
        offset: &Value,
        size: &Value,
        stride: &Value,
        dtype: Option<SType>,
    ) -> Result<Raw, String> {
        let s = match storage {
            Value::Storage(s) => s.clone(),
            Value::Invalid(m) => return Err(m.to_string()),
            other => return Err(format!("a tensor's storage is {}", other.kind())),
        };
        let stype = match (s.stype, dtype) {
            (Some(t), None) => t,
            (None, Some(t)) => t,
            (Some(t), Some(d)) if t == d => t,
            (None, None) => return Err("an untyped storage without a dtype".into()),
            (Some(_), Some(_)) => return Err("a typed storage with another dtype".into()),
        };
        let elem = stype.size();
        if s.data.len() % elem != 0 {
            return Err("a storage's byte count is not a whole number of elements".into());
        }
        let storage_len = s.data.len() / elem;
        let shape = dims(size, "size")?;
        let strides = dims(stride, "stride")?;
        let offset = match offset {
            Value::Int(o) => usize::try_from(*o).map_err(|_| "a negative storage offset".to_string())?,
            other => return Err(format!("a storage offset is {}", other.kind())),
        };
        if shape.len() != strides.len() {
            return Err(format!(
                "size has {} dimensions and stride {}",
                shape.len(),
                strides.len()
            ));
        }
        let numel = shape
            .iter()
            .try_fold(1usize, |a, d| a.checked_mul(*d))
            .ok_or("the tensor's size overflows")?;
        // A dimension of size 1 never steps: its stride does not matter (PyTorch writes any).
        let strides: Vec<usize> = shape
            .iter()
            .zip(&strides)
            .map(|(d, s)| if *d == 1 { 0 } else { *s })
            .collect();
        if numel > 0 {
            let last = shape
                .iter()
                .zip(&strides)
                .try_fold(offset, |a, (d, s)| {
                    (d - 1).checked_mul(*s).and_then(|x| x.checked_add(a))
                })
                .ok_or("the tensor's view overflows")?;
            if last >= storage_len {
                return Err(format!(
                    "the view (offset {offset}, size {shape:?}, stride {strides:?}) reaches element {last} of a storage of {storage_len}"
                ));
            }
        }
        let nbytes = numel.checked_mul(elem).ok_or("the tensor's size overflows")?;
        if nbytes > self.budget {
            return Err("the tensors would take more memory than 4x the file plus 64 MiB; refusing".into());
        }
        self.budget -= nbytes;
        let mut bytes = Vec::with_capacity(nbytes);
        let contiguous = shape
            .iter()
            .zip(strides.iter().zip(contiguous_strides(&shape)))
            .all(|(d, (s, c))| *d == 1 || *s == c);
        if numel > 0 && contiguous {
            bytes.extend_from_slice(&s.data[offset * elem..(offset + numel) * elem]);
        } else if numel > 0 {
            // Odometer over the index space, row-major. Every dimension of size 2 or more has a
            // stride below the storage length (checked above), so nothing here overflows.
            let mut idx = vec![0usize; shape.len()];
            let mut at = offset;
            for _ in 0..numel {
                bytes.extend_from_slice(&s.data[at * elem..(at + 1) * elem]);
                for d in (0..shape.len()).rev() {
                    idx[d] += 1;
                    at += strides[d];
                    if idx[d] < shape[d] {
                        break;
                    }
                    at -= strides[d] * shape[d];
                    idx[d] = 0;
                }
            }
        }
        if self.big_endian && elem > 1 {
            for c in bytes.chunks_exact_mut(elem) {
                c.reverse();
            }
        }
        Ok(Raw { stype, shape, bytes })
    }

    pub(super) fn rebuild_q(
        &mut self,
        storage: &Value,
        offset: &Value,
        size: &Value,
        stride: &Value,
        qparams: &Value,
    ) -> Result<Value, String> {
        let raw = self.materialise(storage, offset, size, stride, None)?;
        if !raw.stype.is_quantized() {
            return Err(format!("a quantized tensor over a {:?} storage", raw.stype));
        }
        let Value::Tuple(q, _) = qparams else {
            return Err(format!("quantizer parameters are {}", qparams.kind()));
        };
        let scheme = match q.as_slice() {
            [Value::Global(s), scale, Value::Int(zp)] if &**s == "torch.per_tensor_affine" => {
                let scale = match scale {
                    Value::Float(f) => *f,
                    Value::Int(i) => *i as f64,
                    other => return Err(format!("a scale is {}", other.kind())),
                };
                check_scale(scale)?;
                QScheme::PerTensor { scale, zero_point: *zp }
            }
            [Value::Global(s), scales, zps, Value::Int(axis)]
                if &**s == "torch.per_channel_affine" || &**s == "torch.per_channel_affine_float_qparams" =>
            {
                let axis = usize::try_from(*axis)
                    .ok()
                    .filter(|a| *a < raw.shape.len())
                    .ok_or_else(|| format!("axis {axis} of a tensor with {} dimensions", raw.shape.len()))?;
                let channels = raw.shape[axis];
                let (scales, zero_points) = match (scales, zps) {
                    (Value::Tensor(s), Value::Tensor(z)) => (
                        s.to_f64(),
                        z.to_i64().ok_or("per-channel zero points are not integers")?,
                    ),
                    (Value::Invalid(m), _) | (_, Value::Invalid(m)) => return Err(m.to_string()),
                    _ => return Err("per-channel scales and zero points are not tensors".into()),
                };
                if scales.len() != channels || zero_points.len() != channels {
                    return Err(format!(
                        "{} scales and {} zero points for {channels} channels on axis {axis}",
                        scales.len(),
                        zero_points.len()
                    ));
                }
                for s in &scales {
                    check_scale(*s)?;
                }
                QScheme::PerChannel {
                    axis,
                    scales,
                    zero_points,
                }
            }
            [Value::Global(s), ..] => return Err(format!("quantization scheme `{}`, which qc does not read", clip(s))),
            _ => return Err("quantizer parameters of an unknown form".into()),
        };
        Ok(Value::QTensor(Rc::new(RawQ { int_repr: raw, scheme })))
    }
}

pub(super) fn check_scale(s: f64) -> Result<(), String> {
    if s.is_finite() && s > 0.0 {
        Ok(())
    } else {
        Err(format!("scale {s} is not a positive finite number"))
    }
}

pub(super) fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut out = vec![1usize; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        out[d] = out[d + 1].saturating_mul(shape[d + 1]);
    }
    out
}

/// A size or stride tuple of non-negative ints.
pub(super) fn dims(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    let Value::Tuple(items, _) = v else {
        return Err(format!("a tensor's {what} is {}", v.kind()));
    };
    if items.len() > MAX_DIMS {
        return Err(format!(
            "a tensor with {} dimensions (qc reads up to {MAX_DIMS})",
            items.len()
        ));
    }
    items
        .iter()
        .map(|i| match i {
            Value::Int(n) => usize::try_from(*n).map_err(|_| format!("a negative {what} {n}")),
            other => Err(format!("a tensor's {what} holds {}", other.kind())),
        })
        .collect()
}

/// Little-endian two's complement integer of LONG1/LONG4, which must fit in i64.
pub(super) fn long(b: &[u8]) -> Result<i64, Fail> {
    if b.is_empty() {
        return Ok(0);
    }
    let negative = b[b.len() - 1] & 0x80 != 0;
    let fill = if negative { 0xff } else { 0 };
    if b.len() > 8 && b[8..].iter().any(|x| *x != fill) {
        return Err("an integer does not fit in 64 bits".into());
    }
    let mut a = [fill; 8];
    let n = b.len().min(8);
    a[..n].copy_from_slice(&b[..n]);
    let v = i64::from_le_bytes(a);
    if b.len() > 8 && (v < 0) != negative {
        return Err("an integer does not fit in 64 bits".into());
    }
    Ok(v)
}

pub(super) fn child_depth<'v>(items: impl Iterator<Item = &'v Value>) -> Result<u32, Fail> {
    let d = 1 + items.map(Value::depth).max().unwrap_or(0);
    if d > MAX_DEPTH {
        return Err(format!("values nest deeper than {MAX_DEPTH}"));
    }
    Ok(d)
}

pub(super) fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, Fail> {
    if items.len() & 1 == 1 {
        return Err("a dict gets an odd number of keys and values".into());
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

pub(super) fn append(target: &mut Value, items: Vec<Value>) -> Result<(), Fail> {
    let Value::List(list, depth) = target else {
        return Err(format!("APPEND to {}", target.kind()));
    };
    let d = child_depth(items.iter())?;
    *depth = (*depth).max(d);
    list.extend(items);
    Ok(())
}

pub(super) fn set_items(target: &mut Value, items: Vec<(Value, Value)>) -> Result<(), Fail> {
    let Value::Dict(dict, depth) = target else {
        return Err(format!("SETITEM on {}", target.kind()));
    };
    let d = child_depth(items.iter().flat_map(|(k, v)| [k, v]))?;
    *depth = (*depth).max(d);
    dict.extend(items);
    Ok(())
}
