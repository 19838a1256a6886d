"""The SASS instruction-mix check of benchmarks/bench_kernels.py (fi_backend/bench/sass.py),
on a recorded cuobjdump excerpt."""

from fi_backend.bench.sass import instruction_mix

SASS = """
	code for sm_90a
		Function : _ZN10fi_kernels27batch_attention_sm90_kernelI13__nv_bfloat16Li128EEEvNS_20BatchAttentionParamsE
	.headerflags	@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                        /* 0x00000a00ff017b82 */
        /*0010*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], RZ, !UPT ;   /* 0x0000000008187df3 */
        /*0020*/              @!P0 HGMMA.64x128x16.F32.BF16 R24, gdesc[UR12], R24 ;     /* 0x000000000c187df3 */
        /*0030*/                   SYNCS.ARRIVE.TRANS64.RED.A1T0 RZ, [UR4], RZ ;  /* 0x00000000ffff79a7 */
        /*0040*/                   MUFU.EX2 R5, R4 ;                             /* 0x0000000400057308 */
        /*0050*/                   MUFU.RCP R6, R4 ;                             /* 0x0000000400067308 */
		Function : _ZN10fi_kernels27merge_partial_states_kernelI13__nv_bfloat16Li128EEEvNS_20BatchAttentionParamsE
        /*0000*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;        /* 0x0000000c0804723c */
		Function : _ZN10fi_kernels22batch_attention_kernelI13__nv_bfloat16Li128ELb1EEEvNS_20BatchAttentionParamsE
        /*0000*/                   LDSM.16.M88.4 R8, [R2] ;                      /* 0x000000000208783b */
        /*0010*/               @P1 HMMA.16816.F32.BF16 R4, R8, R12, R4 ;        /* 0x0000000c0804723c */
        /*0020*/                   LDGSTS.E.BYPASS.128 [R3], desc[UR4][R6.64] ; /* 0x0000000006037fae */
"""


def test_counts_opcodes_per_kernel_with_predicates_and_suffixes():
    mix = instruction_mix(SASS, "batch_attention")
    sm90 = mix["_ZN10fi_kernels27batch_attention_sm90_kernelI13__nv_bfloat16Li128EEEvNS_20"
               "BatchAttentionParamsE"]
    assert sm90 == {"HGMMA": 2, "HMMA": 0, "LDSM": 0, "LDGSTS": 0, "SYNCS": 1, "MUFU.EX2": 1}
    sm80 = mix["_ZN10fi_kernels22batch_attention_kernelI13__nv_bfloat16Li128ELb1EEEvNS_20"
               "BatchAttentionParamsE"]
    assert sm80 == {"HGMMA": 0, "HMMA": 1, "LDSM": 1, "LDGSTS": 1, "SYNCS": 0, "MUFU.EX2": 0}


def test_name_filter_leaves_other_kernels_out():
    mix = instruction_mix(SASS, "batch_attention_sm90_kernel")
    assert list(mix) == ["_ZN10fi_kernels27batch_attention_sm90_kernelI13__nv_bfloat16Li128EE"
                         "EvNS_20BatchAttentionParamsE"]
    assert instruction_mix(SASS, "no_such_kernel") == {}
