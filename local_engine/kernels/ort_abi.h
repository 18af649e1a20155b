/* The few parts of onnxruntime's C ABI that ops.c uses, declared by us.
 *
 * onnxruntime's OrtApi is a table of function pointers that only ever grows at its end: an entry keeps its
 * position in every later release, so an entry is named here by its 0-based position (TG_IDX_*) and its
 * signature (TG_FN_*). Positions and signatures were read from onnxruntime's C API (API version 17, the first
 * with KernelContext_ParallelFor) and checked against a running onnxruntime by a library calling each of them.
 * OrtCustomOp is the custom-op description onnxruntime reads up to the members its `version` field enables.
 */
#ifndef TG_ORT_ABI_H
#define TG_ORT_ABI_H

#include <stddef.h>
#include <stdint.h>

#define ORT_API_CALL
#define TG_ORT_API_VERSION 17   /* KernelContext_ParallelFor is "since 1.17" */
#define TG_CUSTOM_OP_VERSION 17 /* CreateKernelV2 / KernelComputeV2 (16+), optional version range (17+) */

typedef struct OrtStatus OrtStatus;
typedef struct OrtValue OrtValue;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtShapeInferContext OrtShapeInferContext;
struct OrtCustomOp;

typedef enum { ORT_OK = 0, ORT_FAIL = 1, ORT_INVALID_ARGUMENT = 2 } OrtErrorCode;
typedef enum {
    ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT = 1,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 = 2,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 = 3,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 = 6,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 = 7,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 = 10,
} ONNXTensorElementDataType;
typedef enum { INPUT_OUTPUT_REQUIRED = 0, INPUT_OUTPUT_OPTIONAL = 1 } OrtCustomOpInputOutputCharacteristic;
typedef enum { OrtMemTypeDefault = 0 } OrtMemType;

/* The API table: opaque, read by position. */
typedef struct OrtApi {
    void* entries[1];
} OrtApi;

typedef struct OrtApiBase {
    const OrtApi*(ORT_API_CALL* GetApi)(uint32_t version);
    const char*(ORT_API_CALL* GetVersionString)(void);
} OrtApiBase;

#define TG_IDX_CreateStatus 0
typedef OrtStatus* (*TG_FN_CreateStatus)(OrtErrorCode code, const char* message);
#define TG_IDX_CreateCustomOpDomain 26
typedef OrtStatus* (*TG_FN_CreateCustomOpDomain)(const char* domain, OrtCustomOpDomain** out);
#define TG_IDX_CustomOpDomain_Add 27
typedef OrtStatus* (*TG_FN_CustomOpDomain_Add)(OrtCustomOpDomain* domain, const struct OrtCustomOp* op);
#define TG_IDX_AddCustomOpDomain 28
typedef OrtStatus* (*TG_FN_AddCustomOpDomain)(OrtSessionOptions* options, OrtCustomOpDomain* domain);
#define TG_IDX_GetTensorMutableData 51
typedef OrtStatus* (*TG_FN_GetTensorMutableData)(OrtValue* value, void** out);
#define TG_IDX_GetDimensionsCount 61
typedef OrtStatus* (*TG_FN_GetDimensionsCount)(const OrtTensorTypeAndShapeInfo* info, size_t* out);
#define TG_IDX_GetDimensions 62
typedef OrtStatus* (*TG_FN_GetDimensions)(const OrtTensorTypeAndShapeInfo* info, int64_t* dims, size_t length);
#define TG_IDX_GetTensorTypeAndShape 65
typedef OrtStatus* (*TG_FN_GetTensorTypeAndShape)(const OrtValue* value, OrtTensorTypeAndShapeInfo** out);
#define TG_IDX_KernelContext_GetInput 90
typedef OrtStatus* (*TG_FN_KernelContext_GetInput)(const OrtKernelContext* ctx, size_t index, const OrtValue** out);
#define TG_IDX_KernelContext_GetOutput 91
typedef OrtStatus* (*TG_FN_KernelContext_GetOutput)(OrtKernelContext* ctx, size_t index, const int64_t* dims,
                                                    size_t rank, OrtValue** out);
#define TG_IDX_ReleaseStatus 93
typedef void (*TG_FN_ReleaseStatus)(OrtStatus* status);
#define TG_IDX_ReleaseTensorTypeAndShapeInfo 99
typedef void (*TG_FN_ReleaseTensorTypeAndShapeInfo)(OrtTensorTypeAndShapeInfo* info);
#define TG_IDX_KernelContext_ParallelFor 274
typedef OrtStatus* (*TG_FN_KernelContext_ParallelFor)(const OrtKernelContext* ctx, void (*fn)(void*, size_t),
                                                      size_t total, size_t num_batch, void* data);

/* api->Name(...) for an entry declared above */
#define ORT_CALL(name) ((TG_FN_##name)(api->entries[TG_IDX_##name]))

typedef struct OrtCustomOp {
    uint32_t version;
    void*(ORT_API_CALL* CreateKernel)(const struct OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info);
    const char*(ORT_API_CALL* GetName)(const struct OrtCustomOp* op);
    const char*(ORT_API_CALL* GetExecutionProviderType)(const struct OrtCustomOp* op);
    ONNXTensorElementDataType(ORT_API_CALL* GetInputType)(const struct OrtCustomOp* op, size_t index);
    size_t(ORT_API_CALL* GetInputTypeCount)(const struct OrtCustomOp* op);
    ONNXTensorElementDataType(ORT_API_CALL* GetOutputType)(const struct OrtCustomOp* op, size_t index);
    size_t(ORT_API_CALL* GetOutputTypeCount)(const struct OrtCustomOp* op);
    void(ORT_API_CALL* KernelCompute)(void* kernel, OrtKernelContext* context);
    void(ORT_API_CALL* KernelDestroy)(void* kernel);
    OrtCustomOpInputOutputCharacteristic(ORT_API_CALL* GetInputCharacteristic)(const struct OrtCustomOp* op,
                                                                               size_t index);
    OrtCustomOpInputOutputCharacteristic(ORT_API_CALL* GetOutputCharacteristic)(const struct OrtCustomOp* op,
                                                                                size_t index);
    OrtMemType(ORT_API_CALL* GetInputMemoryType)(const struct OrtCustomOp* op, size_t index);
    int(ORT_API_CALL* GetVariadicInputMinArity)(const struct OrtCustomOp* op);
    int(ORT_API_CALL* GetVariadicInputHomogeneity)(const struct OrtCustomOp* op);
    int(ORT_API_CALL* GetVariadicOutputMinArity)(const struct OrtCustomOp* op);
    int(ORT_API_CALL* GetVariadicOutputHomogeneity)(const struct OrtCustomOp* op);
    OrtStatus*(ORT_API_CALL* CreateKernelV2)(const struct OrtCustomOp* op, const OrtApi* api,
                                             const OrtKernelInfo* info, void** kernel);
    OrtStatus*(ORT_API_CALL* KernelComputeV2)(void* kernel, OrtKernelContext* context);
    OrtStatus*(ORT_API_CALL* InferOutputShapeFn)(const struct OrtCustomOp* op, OrtShapeInferContext* ctx);
    int(ORT_API_CALL* GetStartVersion)(const struct OrtCustomOp* op);
    int(ORT_API_CALL* GetEndVersion)(const struct OrtCustomOp* op);
    size_t(ORT_API_CALL* GetMayInplace)(int** input_index, int** output_index);
    void(ORT_API_CALL* ReleaseMayInplace)(int* input_index, int* output_index);
    size_t(ORT_API_CALL* GetAliasMap)(int** input_index, int** output_index);
    void(ORT_API_CALL* ReleaseAliasMap)(int* input_index, int* output_index);
} OrtCustomOp;

#endif
