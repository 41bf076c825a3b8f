//! Intel AMX tiles through LLVM's register-numbered intrinsics (the forms
//! behind `_tile_loadd(1, ...)`): tiles are named by number, so no
//! `x86_amx` values and no LLVM tile-shape analysis are involved. The
//! kernels configure all eight tiles alike, 16 rows of 64 bytes: a bf16
//! operand tile is 16 × 32 values, an accumulator 16 × 16 floats.

use super::emit::Emitter;
use inkwell::module::Linkage;
use inkwell::values::{IntValue, PointerValue};

/// Rows and bytes per row of every tile.
pub const TILE_ROWS: u64 = 16;
pub const TILE_BYTES_PER_ROW: u64 = 64;

impl<'ctx> Emitter<'_, 'ctx> {
    fn tile_reg(&self, t: u8) -> inkwell::values::BasicMetadataValueEnum<'ctx> {
        self.ctx.i8_type().const_int(u64::from(t), false).into()
    }

    /// Loads the tile configuration (palette 1, eight 16 × 64-byte tiles)
    /// for this thread: before the first tile instruction of a kernel call.
    pub fn tile_config(&self) {
        let name = "resnetc_amx_tile_config";
        let cfg = self.module.get_global(name).unwrap_or_else(|| {
            let mut bytes = [0u8; 64];
            bytes[0] = 1;
            for t in 0..8 {
                bytes[16 + 2 * t] = TILE_BYTES_PER_ROW as u8;
                bytes[48 + t] = TILE_ROWS as u8;
            }
            let i8t = self.ctx.i8_type();
            let init = i8t.const_array(
                &bytes
                    .iter()
                    .map(|&b| i8t.const_int(u64::from(b), false))
                    .collect::<Vec<_>>(),
            );
            let g = self.module.add_global(i8t.array_type(64), None, name);
            g.set_initializer(&init);
            g.set_constant(true);
            g.set_linkage(Linkage::Internal);
            g.set_alignment(64);
            g
        });
        self.call_intrinsic("llvm.x86.ldtilecfg", &[], &[cfg.as_pointer_value().into()]);
    }

    /// Gives the tile state back (after a kernel call's last tile use), so
    /// that the thread does not carry it through context switches.
    pub fn tile_release(&self) {
        self.call_intrinsic("llvm.x86.tilerelease", &[], &[]);
    }

    pub fn tile_zero(&self, t: u8) {
        self.call_intrinsic("llvm.x86.tilezero", &[], &[self.tile_reg(t)]);
    }

    /// Tile `t` from 16 rows at `p`, `stride` bytes apart.
    pub fn tile_load(&self, t: u8, p: PointerValue<'ctx>, stride: IntValue<'ctx>) {
        self.call_intrinsic(
            "llvm.x86.tileloadd64",
            &[],
            &[self.tile_reg(t), p.into(), stride.into()],
        );
    }

    /// Tile `t` to 16 rows at `p`, `stride` bytes apart.
    pub fn tile_store(&self, t: u8, p: PointerValue<'ctx>, stride: IntValue<'ctx>) {
        self.call_intrinsic(
            "llvm.x86.tilestored64",
            &[],
            &[self.tile_reg(t), p.into(), stride.into()],
        );
    }

    /// `c += a · b`: `a` 16 rows of 16 bf16 pairs, `b` 16 rows (pairs of
    /// the reduction) of 16 bf16 pairs, `c` 16 × 16 floats.
    pub fn tile_dp_bf16(&self, c: u8, a: u8, b: u8) {
        self.call_intrinsic(
            "llvm.x86.tdpbf16ps",
            &[],
            &[self.tile_reg(c), self.tile_reg(a), self.tile_reg(b)],
        );
    }
}
