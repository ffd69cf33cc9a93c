/** dicomshare's OHIF configuration: one data source, the share being viewed. */
window.config = {
  name: "dicomshare",
  routerBasename: null,
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: false,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: "never" },
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
  showErrorDetails: "production",
  defaultDataSourceName: "dicomjson",
  dataSources: [
    {
      // The share's document, built in the browser by dicomshare-viewer.js from the share
      // API's pages; presigned S3 GETs, one per instance (or frame). A plain Accept header
      // keeps each GET a CORS "simple request": no preflight per instance.
      namespace: "@ohif/extension-default.dataSourcesModule.dicomjson",
      sourceName: "dicomjson",
      configuration: { friendlyName: "Shared study", name: "share", acceptHeader: ["application/dicom"] },
    },
  ],
};
