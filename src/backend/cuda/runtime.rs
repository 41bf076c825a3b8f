//! Runs a compiled model on an NVIDIA GPU through the CUDA driver API
//! (cudarc, the driver library loaded at run time): the PTX loaded once,
//! the constant pool uploaded once, and per batch size one device arena and
//! one CUDA graph of the whole forward pass, captured on first use, so a
//! run is one copy in, one graph launch and one copy out. Independent of
//! LLVM: it needs only a `CudaProgram`.

use super::gpus;
use super::plan::{Arg, Launch, LaunchPlan};
use super::CudaProgram;
use crate::tensor::Tensor;
use cudarc::driver::{result, sys, CudaContext, CudaGraph, CudaStream};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::Arc;

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum CudaError {
    #[error("no CUDA driver was found (libcuda.so could not be loaded)")]
    #[diagnostic(
        code(resnetc::cuda::no_driver),
        help("run on a machine with an NVIDIA GPU and its driver, or use --target cpu; `resnetc build --target cuda` works without a GPU")
    )]
    NoDriver,
    #[error("CUDA: {what}: {err}")]
    #[diagnostic(code(resnetc::cuda::driver), help("{hint}"))]
    Driver {
        what: String,
        err: String,
        hint: String,
    },
    #[error("the model was built for {built}, but GPU 0 is {gpu}")]
    #[diagnostic(
        code(resnetc::cuda::arch),
        help("{advice} (PTX runs on the GPU it was built for and every later one)")
    )]
    OlderGpu {
        built: String,
        gpu: String,
        advice: String,
    },
    #[error("GPU 0 is {gpu} with a CUDA {driver} driver: resnetc has no code for it")]
    #[diagnostic(
        code(resnetc::cuda::arch),
        help("resnetc's kernels need sm_70 (V100) or later and a CUDA 11.5 driver or later")
    )]
    UnsupportedGpu { gpu: String, driver: String },
    #[error("input shape {got:?} does not match the model's [N, {want:?}]")]
    #[diagnostic(code(resnetc::cuda::input))]
    Input { got: Vec<usize>, want: Vec<usize> },
}

/// PTX runs on the GPU it was built for and every later one; on an older
/// one the driver's error (no binary for the GPU) would not say which
/// `--gpu` to build with.
fn check_arch(ctx: &CudaContext, built: &str) -> Result<(), CudaError> {
    let (major, minor) = driver("read the compute capability", ctx.compute_capability())?;
    let have = (major * 10 + minor).max(0) as u32;
    let want = gpus::find(built).map_or(0, gpus::capability);
    if have >= want {
        return Ok(());
    }
    let name = ctx.name().unwrap_or_else(|_| "a GPU".into());
    Err(CudaError::OlderGpu {
        built: built.to_string(),
        gpu: format!("{name} (sm_{major}{minor})"),
        advice: match gpus::newest_for(have) {
            Some(g) => format!("build it with --gpu {}", g.name),
            None => "resnetc's kernels need sm_70 (V100) or later".into(),
        },
    })
}

/// GPU 0 as the driver describes it, read without creating a context:
/// what `run`/`bench --target cuda` build for by default.
#[derive(Clone, Copy, Debug)]
pub struct LocalGpu {
    /// Compute capability: 90 for 9.0.
    pub cc: u32,
    /// `cuDriverGetVersion`: 12080 for CUDA 12.8.
    pub driver: u32,
    /// Multiprocessors (114 on an H100 PCIe, 132 on an H100 SXM).
    pub sms: u64,
}

impl LocalGpu {
    /// The newest architecture resnetc targets that this GPU runs and
    /// whose PTX version its driver knows.
    pub fn architecture(&self) -> Result<&'static gpus::Gpu, CudaError> {
        gpus::newest_runnable(self.cc, self.driver).ok_or_else(|| CudaError::UnsupportedGpu {
            gpu: format!("sm_{}", self.cc),
            driver: format!("{}.{}", self.driver / 1000, self.driver % 1000 / 10),
        })
    }
}

/// Reads GPU 0's compute capability, multiprocessor count and driver
/// version, without creating a context.
pub fn local_gpu() -> Result<LocalGpu, CudaError> {
    if !driver_present() {
        return Err(CudaError::NoDriver);
    }
    driver("initialize the CUDA driver", result::init())?;
    let dev = driver("find GPU 0", result::device::get(0))?;
    let attribute = |a| {
        // SAFETY: `dev` came from cuDeviceGet.
        driver("read GPU 0's attributes", unsafe {
            result::device::get_attribute(dev, a)
        })
        .map(|v| v.max(0) as u32)
    };
    use sys::CUdevice_attribute::{
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR as MAJOR,
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR as MINOR,
        CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT as SMS,
    };
    let cc = attribute(MAJOR)? * 10 + attribute(MINOR)?;
    let sms = attribute(SMS)?.max(1) as u64;
    let mut version = 0;
    // SAFETY: writes one int.
    let got = unsafe { sys::cuDriverGetVersion(&mut version) };
    driver("read the driver's version", got.result())?;
    Ok(LocalGpu {
        cc,
        driver: version.max(0) as u32,
        sms,
    })
}

/// Whether the CUDA driver library can be loaded. cudarc panics on first
/// use without one, so every entry point checks this first.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { sys::is_culib_present() }
}

fn driver<T>(what: &str, r: Result<T, result::DriverError>) -> Result<T, CudaError> {
    r.map_err(|e| {
        let err = format!("{e:?}");
        let hint = if err.contains("UNSUPPORTED_PTX") {
            "the driver does not know the PTX's ISA version (7.5 needs a CUDA 11.5 driver, sm_89's 7.8 CUDA 11.8, sm_90's 8.0 CUDA 12.0): update the driver"
        } else if err.contains("NO_BINARY_FOR_GPU") {
            "the PTX targets a newer GPU than this one: build with the --gpu of this GPU (`nvidia-smi --query-gpu=compute_cap --format=csv`)"
        } else if err.contains("INVALID_PTX") {
            "the driver's JIT rejected the PTX: a bug in resnetc, or a driver too old for it"
        } else if err.contains("OUT_OF_MEMORY") {
            "use a smaller batch"
        } else {
            "check the GPU with nvidia-smi"
        };
        CudaError::Driver {
            what: what.to_string(),
            err,
            hint: hint.to_string(),
        }
    })
}

/// Loads a module image (NUL-terminated PTX, or a cubin) with
/// cuModuleLoadDataEx and the JIT's error log, so that a PTX the driver
/// cannot compile fails with what its JIT said, not an error code alone.
fn load_module(image: *const c_void, what: &str) -> Result<sys::CUmodule, CudaError> {
    use sys::CUjit_option::{CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
    let mut log = vec![0u8; 1 << 16];
    let mut options = [CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES];
    // The size travels as the pointer's value (in: capacity; out: used).
    let mut values = [log.as_mut_ptr() as *mut c_void, log.len() as *mut c_void];
    let mut module = std::ptr::null_mut();
    // SAFETY: `image` is a NUL-terminated PTX or a whole cubin; the log
    // buffer outlives the call and its size is what was allocated.
    let got = unsafe {
        sys::cuModuleLoadDataEx(
            &mut module,
            image,
            options.len() as u32,
            options.as_mut_ptr(),
            values.as_mut_ptr(),
        )
    };
    driver(what, got.result()).map_err(|e| {
        let used = (values[1] as usize).min(log.len());
        let end = log[..used].iter().position(|&b| b == 0).unwrap_or(used);
        let said = String::from_utf8_lossy(&log[..end]);
        match (e, said.trim()) {
            (e, "") => e,
            (CudaError::Driver { what, err, hint }, said) => CudaError::Driver {
                what,
                err: format!("{err}; the JIT's log:\n{said}"),
                hint,
            },
            (e, _) => e,
        }
    })?;
    Ok(module)
}

/// Reads values back from the device: `(at, per, stride)` → every
/// image's `per` elements at `at`, images `stride` apart.
pub type Reader<'a> = dyn Fn(Arg, usize, u64) -> Result<Vec<f32>, CudaError> + 'a;

/// Device memory freed on drop.
struct DeviceBuffer {
    ptr: sys::CUdeviceptr,
}

impl DeviceBuffer {
    fn new(ctx: &CudaContext, floats: u64) -> Result<DeviceBuffer, CudaError> {
        driver("bind context", ctx.bind_to_thread())?;
        // SAFETY: a plain allocation (at least one byte).
        let ptr = driver("allocate device memory", unsafe {
            result::malloc_sync((floats.max(1) * 4) as usize)
        })?;
        Ok(DeviceBuffer { ptr })
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_sync and freed once.
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

/// What one batch size needs: its arena and its captured forward pass.
struct Batch {
    arena: DeviceBuffer,
    graph: CudaGraph,
}

/// A model loaded on the GPU.
pub struct Device {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: sys::CUmodule,
    functions: HashMap<String, sys::CUfunction>,
    consts: DeviceBuffer,
    plan: LaunchPlan,
    batches: HashMap<u64, Batch>,
    /// What the module was loaded from: SASS, or PTX and why.
    loaded: String,
}

impl Device {
    /// Loads `program` on GPU 0.
    pub fn load(program: &CudaProgram) -> Result<Device, CudaError> {
        if !driver_present() {
            return Err(CudaError::NoDriver);
        }
        let ctx = driver("create a context on GPU 0", CudaContext::new(0))?;
        // The runtime orders everything on one stream; cudarc's per-buffer
        // events would only get in the way of graph capture.
        // SAFETY: no cudarc buffers are shared between streams here.
        unsafe { ctx.disable_event_tracking() };
        let stream = driver("create a stream", ctx.new_stream())?;
        check_arch(&ctx, &program.plan.gpu)?;
        let ptx = CString::new(program.ptx.as_bytes()).map_err(|_| CudaError::Driver {
            what: "load the PTX".into(),
            err: "the PTX holds a NUL byte".into(),
            hint: "this is a bug in resnetc".into(),
        })?;
        driver("bind context", ctx.bind_to_thread())?;
        // SASS runs only on its own architecture; anywhere else, or if it
        // fails to load, the PTX (JIT-compiled by the driver).
        let (major, minor) = driver("read the compute capability", ctx.compute_capability())?;
        let exact = gpus::find(&program.plan.gpu)
            .is_some_and(|g| gpus::capability(g) as i32 == major * 10 + minor);
        let mut loaded = format!("PTX for {}, JIT-compiled by the driver", program.plan.gpu);
        let sass = match &program.sass {
            Some(cubin) if exact => match load_module(cubin.as_ptr() as *const c_void, "load SASS")
            {
                Ok(m) => Some(m),
                Err(e) => {
                    loaded += &format!(" (the SASS did not load: {e})");
                    None
                }
            },
            Some(_) => {
                loaded += &format!(" (SASS is for {} only)", program.plan.gpu);
                None
            }
            None => None,
        };
        let module = match sass {
            Some(m) => {
                loaded = format!("SASS for {}", program.plan.gpu);
                m
            }
            None => load_module(ptx.as_ptr() as *const c_void, "load the PTX")?,
        };
        let mut functions = HashMap::new();
        for name in &program.plan.kernels {
            let c = CString::new(name.as_str()).unwrap_or_default();
            // SAFETY: the module was just loaded.
            let f = driver(&format!("find kernel {name}"), unsafe {
                result::module::get_function(module, c)
            })?;
            functions.insert(name.clone(), f);
        }
        let consts = DeviceBuffer::new(&ctx, program.consts.len() as u64)?;
        // SAFETY: the buffer holds exactly the pool.
        driver("upload the weights", unsafe {
            result::memcpy_htod_sync(consts.ptr, &program.consts)
        })?;
        // A copy from pageable memory may return before its DMA is done,
        // and the non-blocking stream is not ordered after it.
        driver("wait for the weights", ctx.synchronize())?;
        Ok(Device {
            ctx,
            stream,
            module,
            functions,
            consts,
            plan: program.plan.clone(),
            batches: HashMap::new(),
            loaded,
        })
    }

    /// The launch plan this device runs.
    pub fn plan(&self) -> &LaunchPlan {
        &self.plan
    }

    /// What the kernels were loaded from: `SASS for sm_90`, or `PTX for
    /// sm_80, JIT-compiled by the driver` (and why not SASS, if it was
    /// there).
    pub fn loaded(&self) -> &str {
        &self.loaded
    }

    /// The GPU's name and compute capability.
    pub fn name(&self) -> String {
        let name = self.ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        match self.ctx.compute_capability() {
            Ok((a, b)) => format!("{name} (sm_{a}{b})"),
            Err(_) => name,
        }
    }

    /// Enqueues every kernel of the forward pass for batch `n` on the
    /// stream (what the graph captures).
    fn enqueue(&self, n: u64, arena: sys::CUdeviceptr) -> Result<(), CudaError> {
        for l in &self.plan.launches {
            self.launch(l, n, arena)?;
        }
        Ok(())
    }

    /// Enqueues launch `l` for batch `n`, if it runs at that batch.
    fn launch(&self, l: &Launch, n: u64, arena: sys::CUdeviceptr) -> Result<(), CudaError> {
        let v = l.variant(n);
        if !v.runs(n) {
            return Ok(());
        }
        let mut params: Vec<u64> = l
            .args
            .iter()
            .map(|a| a.address(n, arena, self.consts.ptr))
            .collect();
        params.push(n);
        let mut ptrs: Vec<*mut c_void> = params
            .iter_mut()
            .map(|p| p as *mut u64 as *mut c_void)
            .collect();
        let [gx, gy, gz] = v.grid(n);
        let f = self.functions[&v.kernel];
        // SAFETY: the kernel takes `args.len()` pointers and an i64,
        // every pointer inside the arena of `n` images or the pool.
        driver(&format!("launch {}", l.label), unsafe {
            result::launch_kernel(
                f,
                (gx as u32, gy as u32, gz as u32),
                (v.block as u32, 1, 1),
                0,
                self.stream.cu_stream(),
                &mut ptrs,
            )
        })?;
        Ok(())
    }

    /// The arena and captured graph of batch `n`, made on first use.
    fn batch(&mut self, n: u64) -> Result<&Batch, CudaError> {
        if !self.batches.contains_key(&n) {
            let arena = DeviceBuffer::new(&self.ctx, self.plan.arena_elements(n, n))?;
            driver(
                "begin graph capture",
                self.stream
                    .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
            )?;
            let captured = self.enqueue(n, arena.ptr);
            let graph = driver(
                "end graph capture",
                self.stream.end_capture(sys::CUgraphInstantiate_flags(0)),
            );
            captured?;
            let graph = graph?.ok_or_else(|| CudaError::Driver {
                what: "capture the forward pass".into(),
                err: "the captured graph is empty".into(),
                hint: "this is a bug in resnetc".into(),
            })?;
            self.batches.insert(n, Batch { arena, graph });
        }
        Ok(&self.batches[&n])
    }

    /// The batch of `input`, checked against the model's input shape.
    fn batch_of(&self, input: &Tensor) -> Result<u64, CudaError> {
        let want = &self.plan.input_shape;
        if input.shape.len() != want.len() + 1 || input.shape[1..] != *want || input.shape[0] == 0 {
            return Err(CudaError::Input {
                got: input.shape.clone(),
                want: want.clone(),
            });
        }
        Ok(input.shape[0] as u64)
    }

    /// Enqueues the copies of `input`'s images to their place in `arena`.
    fn copy_in(&self, input: &Tensor, arena: sys::CUdeviceptr) -> Result<(), CudaError> {
        let (plan, n) = (&self.plan, input.shape[0] as u64);
        let per_in: usize = plan.input_shape.iter().product();
        // Images packed back to back go in one copy: each copy from pageable
        // memory is a staging round of the driver's own.
        let chunk = if plan.input_stride == per_in as u64 {
            input.data.len()
        } else {
            per_in
        };
        for (i, images) in input.data.chunks(chunk.max(1)).enumerate() {
            let dst = arena + 4 * (plan.input.elements(n) + i as u64 * plan.input_stride);
            // SAFETY: one image (or the packed batch) into its planned place.
            driver("copy the input", unsafe {
                result::memcpy_htod_async(dst, images, self.stream.cu_stream())
            })?;
        }
        Ok(())
    }

    /// `per` elements of each of `n` images from `at` in `arena`, images
    /// `stride` apart, back to the host (waits for the stream).
    fn copy_out(
        &self,
        arena: sys::CUdeviceptr,
        n: u64,
        at: Arg,
        per: usize,
        stride: u64,
    ) -> Result<Vec<f32>, CudaError> {
        let mut out = vec![0f32; n as usize * per];
        // Packed images come back in one copy, as they went in.
        let chunk = if stride == per as u64 { out.len() } else { per };
        for (i, image) in out.chunks_mut(chunk.max(1)).enumerate() {
            let src = arena + 4 * (at.elements(n) + i as u64 * stride);
            // SAFETY: one image's elements (or the packed batch's), inside
            // the arena of `n` images.
            driver("copy the output", unsafe {
                result::memcpy_dtoh_async(image, src, self.stream.cu_stream())
            })?;
        }
        driver("synchronize", self.stream.synchronize())?;
        Ok(out)
    }

    /// The output of `n` images from `arena`.
    fn output(&self, arena: sys::CUdeviceptr, n: u64) -> Result<Tensor, CudaError> {
        let plan = &self.plan;
        let per: usize = plan.output_shape.iter().product();
        let data = self.copy_out(arena, n, plan.output, per, plan.output_stride)?;
        let mut shape = vec![n as usize];
        shape.extend(&plan.output_shape);
        Ok(Tensor::from_vec(&shape, data))
    }

    /// Runs the model on `input` (`[N, ...]` on the host).
    pub fn run(&mut self, input: &Tensor) -> Result<Tensor, CudaError> {
        let n = self.batch_of(input)?;
        let arena = self.batch(n)?.arena.ptr;
        self.copy_in(input, arena)?;
        driver("run the forward graph", self.batches[&n].graph.launch())?;
        self.output(arena, n)
    }

    /// Runs the model on `input` launch by launch, outside the graph, in an
    /// arena of its own, waiting for each launch: after launch `i` (of the
    /// plan) runs, `after(i, launch, read)` may copy values back, `read(at,
    /// per, stride)` giving every image's `per` elements at `at`, images
    /// `stride` apart. What `--check-layers` compares with the interpreter.
    pub fn run_stepwise(
        &self,
        input: &Tensor,
        mut after: impl FnMut(usize, &Launch, &Reader) -> Result<(), CudaError>,
    ) -> Result<Tensor, CudaError> {
        let n = self.batch_of(input)?;
        let arena = DeviceBuffer::new(&self.ctx, self.plan.arena_elements(n, n))?;
        self.copy_in(input, arena.ptr)?;
        for (i, l) in self.plan.launches.iter().enumerate() {
            if !l.variant(n).runs(n) {
                continue;
            }
            self.launch(l, n, arena.ptr)?;
            driver(&format!("run {}", l.label), self.stream.synchronize())?;
            after(i, l, &|at, per, stride| match at {
                Arg::Arena { .. } => self.copy_out(arena.ptr, n, at, per, stride),
                Arg::Const { .. } => Err(CudaError::Driver {
                    what: format!("read back {}", l.label),
                    err: "a constant is not in the arena".into(),
                    hint: "this is a bug in resnetc".into(),
                }),
            })?;
        }
        self.output(arena.ptr, n)
    }

    /// Milliseconds of `runs` graph launches of batch `n` each, timed with
    /// CUDA events (the input copy excluded), after `warmup` launches.
    pub fn time(&mut self, n: u64, warmup: usize, runs: usize) -> Result<Vec<f64>, CudaError> {
        self.batch(n)?;
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = driver("create an event", self.ctx.new_event(flags))?;
        let end = driver("create an event", self.ctx.new_event(flags))?;
        let b = &self.batches[&n];
        for _ in 0..warmup {
            driver("run the forward graph", b.graph.launch())?;
        }
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            driver("record an event", start.record(&self.stream))?;
            driver("run the forward graph", b.graph.launch())?;
            driver("record an event", end.record(&self.stream))?;
            driver("synchronize", end.synchronize())?;
            times.push(driver("read an event", start.elapsed_ms(&end))? as f64);
        }
        Ok(times)
    }

    /// Every launch of batch `n` timed on its own with CUDA events, outside
    /// the graph (so each includes a launch's overhead), `runs` times
    /// after one warm-up pass: the label and the median milliseconds of
    /// each launch that runs at this batch, in order.
    pub fn profile(&mut self, n: u64, runs: usize) -> Result<Vec<(String, f64)>, CudaError> {
        let runs = runs.max(1);
        let arena = self.batch(n)?.arena.ptr;
        let launches: Vec<&Launch> = self
            .plan
            .launches
            .iter()
            .filter(|l| l.variant(n).runs(n))
            .collect();
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let events = (0..=launches.len())
            .map(|_| driver("create an event", self.ctx.new_event(flags)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(runs); launches.len()];
        for run in 0..=runs {
            driver("record an event", events[0].record(&self.stream))?;
            for (i, l) in launches.iter().enumerate() {
                self.launch(l, n, arena)?;
                driver("record an event", events[i + 1].record(&self.stream))?;
            }
            driver("synchronize", self.stream.synchronize())?;
            if run == 0 {
                continue; // warm-up
            }
            for (i, s) in samples.iter_mut().enumerate() {
                let ms = driver("read an event", events[i].elapsed_ms(&events[i + 1]))?;
                s.push(ms as f64);
            }
        }
        Ok(launches
            .iter()
            .zip(samples)
            .map(|(l, mut s)| {
                s.sort_by(|a, b| a.total_cmp(b));
                (l.label.clone(), s[s.len() / 2])
            })
            .collect())
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.stream.synchronize();
        self.batches.clear();
        // SAFETY: the module is unloaded once, after its last use.
        let _ = unsafe { result::module::unload(self.module) };
    }
}
