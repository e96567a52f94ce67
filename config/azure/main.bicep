// falcon-sentinel-bridge: Azure side of the deployment.
//
// Creates, in the resource group of an existing Log Analytics workspace (the one Microsoft
// Sentinel is enabled on):
//   * three custom tables (Analytics plan): FalconEvents_CL, FalconDetections_CL, FalconBridgeHealth_CL;
//   * a data collection rule of kind Direct (it carries its own logs ingestion endpoint, so no
//     DCE is needed unless you use Private Link) declaring the three input streams, each flowing
//     unchanged (`transformKql: 'source'`) into its table;
//   * optionally a diagnostic setting that sends the DCR's ingestion errors to DCRLogErrors;
//   * the role assignment "Monitoring Metrics Publisher" on the DCR for the bridge's identity.
//
// main.json is the same template in ARM JSON; keep the two in step (same parameters, resources
// and outputs). Deploying needs Monitoring Contributor + Log Analytics Contributor for the
// resources and Owner or User Access Administrator for the role assignment.

@description('Name of the existing Log Analytics workspace (Microsoft Sentinel enabled) in this resource group.')
param workspaceName string

@description('Region of the DCR. Must be the region of the workspace.')
param location string = resourceGroup().location

@description('Name of the data collection rule.')
param dcrName string = 'dcr-falcon-sentinel-bridge'

@description('Interactive (Analytics) retention of the three tables, in days.')
@minValue(4)
@maxValue(730)
param retentionInDays int = 90

@description('Total retention (interactive + long-term) of the three tables, in days. Raised to retentionInDays when lower.')
@minValue(4)
@maxValue(4383)
param totalRetentionInDays int = 90

@description('Object (principal) id of the identity the bridge authenticates as: the user-assigned managed identity federated with the AKS service account. Empty: no role assignment is made.')
param publisherPrincipalId string = ''

@description('Type of publisherPrincipalId. A user-assigned managed identity is a ServicePrincipal.')
@allowed([
  'ServicePrincipal'
  'User'
  'Group'
])
param publisherPrincipalType string = 'ServicePrincipal'

@description('Send the DCR\'s ingestion and transformation errors to the DCRLogErrors table of the workspace.')
param enableDcrErrorLogs bool = true

@description('Tags applied to the DCR.')
param tags object = {}

// Monitoring Metrics Publisher: grants Microsoft.Insights/Telemetry/Write, which the Logs Ingestion API checks.
var monitoringMetricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb'

// Columns of the event tables. The DCR stream and the table must agree: a field the stream does not
// declare is dropped silently at ingestion.
var eventColumns = [
  {
    name: 'TimeGenerated'
    type: 'datetime'
    description: 'Falcon metadata.eventCreationTime.'
  }
  {
    name: 'EventId'
    type: 'string'
    description: 'Deterministic id "{cid}:{partition}:{offset}". A record re-sent after a crash carries the same id.'
  }
  {
    name: 'EventType'
    type: 'string'
    description: 'Falcon metadata.eventType.'
  }
  {
    name: 'CustomerId'
    type: 'string'
    description: 'Falcon metadata.customerIDString (CID).'
  }
  {
    name: 'Partition'
    type: 'int'
    description: 'Falcon Event Streams partition.'
  }
  {
    name: 'Offset'
    type: 'long'
    description: 'Falcon Event Streams offset within the partition.'
  }
  {
    name: 'Event'
    type: 'dynamic'
    description: 'The raw Falcon event line: {metadata, event}.'
  }
]

var healthColumns = [
  {
    name: 'TimeGenerated'
    type: 'datetime'
    description: 'Time the health record was taken.'
  }
  {
    name: 'Instance'
    type: 'string'
    description: 'Bridge instance (pod name).'
  }
  {
    name: 'Version'
    type: 'string'
    description: 'Bridge version.'
  }
  {
    name: 'Status'
    type: 'string'
    description: 'healthy | degraded | unhealthy.'
  }
  {
    name: 'Reason'
    type: 'string'
    description: 'Why the status is not healthy.'
  }
  {
    name: 'ConnectedPartitions'
    type: 'int'
    description: 'Falcon partitions currently streaming.'
  }
  {
    name: 'LatestOffsets'
    type: 'dynamic'
    description: 'Newest durable Falcon offset per partition: {"partition": offset}.'
  }
  {
    name: 'BufferDepthRecords'
    type: 'long'
    description: 'Records in the buffer not yet delivered.'
  }
  {
    name: 'BufferDepthBytes'
    type: 'long'
    description: 'Bytes in the buffer not yet delivered.'
  }
  {
    name: 'BufferCapacityBytes'
    type: 'long'
    description: 'Configured buffer capacity in bytes.'
  }
  {
    name: 'DeliveredRecords'
    type: 'long'
    description: 'Records delivered since the instance started.'
  }
  {
    name: 'DeadLetters'
    type: 'long'
    description: 'Records dead-lettered since the instance started.'
  }
  {
    name: 'LastError'
    type: 'string'
    description: 'Most recent error, if any.'
  }
]

// A stream declaration column has only a name and a type.
var eventStreamColumns = map(eventColumns, column => {
  name: column.name
  type: column.type
})
var healthStreamColumns = map(healthColumns, column => {
  name: column.name
  type: column.type
})

// Table name, input stream and columns of each flow.
var flows = [
  {
    table: 'FalconEvents_CL'
    stream: 'Custom-FalconEvents'
    columns: eventColumns
  }
  {
    table: 'FalconDetections_CL'
    stream: 'Custom-FalconDetections'
    columns: eventColumns
  }
  {
    table: 'FalconBridgeHealth_CL'
    stream: 'Custom-FalconBridgeHealth'
    columns: healthColumns
  }
]

resource workspace 'Microsoft.OperationalInsights/workspaces@2022-10-01' existing = {
  name: workspaceName
}

resource tables 'Microsoft.OperationalInsights/workspaces/tables@2022-10-01' = [
  for flow in flows: {
    parent: workspace
    name: flow.table
    properties: {
      plan: 'Analytics'
      retentionInDays: retentionInDays
      // Never below the interactive retention, which the API would refuse.
      totalRetentionInDays: max(totalRetentionInDays, retentionInDays)
      schema: {
        name: flow.table
        columns: flow.columns
      }
    }
  }
]

resource dcr 'Microsoft.Insights/dataCollectionRules@2023-03-11' = {
  name: dcrName
  location: location
  tags: tags
  // Direct: the DCR gets properties.endpoints.logsIngestion, the URL the bridge posts to.
  kind: 'Direct'
  properties: {
    description: 'falcon-sentinel-bridge: CrowdStrike Falcon Event Streams into Microsoft Sentinel.'
    streamDeclarations: {
      'Custom-FalconEvents': {
        columns: eventStreamColumns
      }
      'Custom-FalconDetections': {
        columns: eventStreamColumns
      }
      'Custom-FalconBridgeHealth': {
        columns: healthStreamColumns
      }
    }
    destinations: {
      logAnalytics: [
        {
          name: 'sentinelWorkspace'
          workspaceResourceId: workspace.id
        }
      ]
    }
    dataFlows: [
      for flow in flows: {
        streams: [
          flow.stream
        ]
        destinations: [
          'sentinelWorkspace'
        ]
        transformKql: 'source'
        outputStream: 'Custom-${flow.table}'
      }
    ]
  }
  // The output tables must exist before the DCR that targets them is validated.
  dependsOn: [
    tables
  ]
}

resource dcrErrorLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (enableDcrErrorLogs) {
  name: 'dcr-log-errors'
  scope: dcr
  properties: {
    workspaceId: workspace.id
    // Resource-specific mode: the errors land in DCRLogErrors (not AzureDiagnostics), which the workbook and alerts query.
    logAnalyticsDestinationType: 'Dedicated'
    logs: [
      {
        category: 'LogErrors'
        enabled: true
      }
    ]
  }
}

resource publisherRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(publisherPrincipalId)) {
  name: guid(dcr.id, publisherPrincipalId, monitoringMetricsPublisherRoleId)
  scope: dcr
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)
    principalId: publisherPrincipalId
    principalType: publisherPrincipalType
    description: 'falcon-sentinel-bridge may send logs through this DCR.'
  }
}

@description('sentinel.endpoint in the bridge config.')
output logsIngestionEndpoint string = dcr.properties.endpoints.logsIngestion

@description('sentinel.dcr_immutable_id in the bridge config.')
output immutableId string = dcr.properties.immutableId

@description('Resource id of the DCR (scope of the role assignment and of the DCR metrics).')
output dcrResourceId string = dcr.id
